# stripedump: two commands on a fresh Debian 12 (bookworm) machine
#   make demo   set everything up, dump a synthetic vmcore over two members, join, compare
#   make test   set everything up and run the test suite
#   make e2e    stripedump inside a real kdump capture kernel under QEMU (not in make test)
#   make deb    the Debian package stripedump_VERSION_ARCH.deb, checked by lintian
#   make e2e-debian  the package in a Debian 12 VM under kdump-tools, crashed (root; not in make test)
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
SD      = $(VENV)/bin/stripedump
DEMO   ?= demo-out
DEMO_SIZE ?= 512M
# python-lzo has no wheel: it builds from source with a C compiler, the C library's and
# Python's headers and the LZO headers (a minimal Debian has none of them).
APT_PACKAGES = gcc libc6-dev python3-dev liblzo2-dev
# `stripedump mount`: libfuse 3 (mfusepy loads it through ctypes) and fusermount3 (mounting as a
# user other than root, and unmounting)
RUNTIME_APT_PACKAGES = libfuse3-3 fuse3
# The real readers that judge `join --format kdump|flat` in tests/kdump/test_join.py;
# strace: tests/test_durability.py checks the order of fsync and rename calls.
# openssh-client, util-linux (flock), coreutils: the ssh:// targets (tests/remote/test_sshtarget.py);
# openssh-server: the tests start their own sshd per "host" on 127.0.0.2, 127.0.0.3, ...
# (tests/helpers/sshd.py); iproute2: tc for the network benchmark; openssl: the s3:// tests' TLS
# certificates (their S3 store itself, SeaweedFS, comes with the test extra: tests/helpers/seaweed.py).
TEST_APT_PACKAGES = makedumpfile crash python3-libkdumpfile libfuse2 strace openssh-client util-linux \
	coreutils iproute2 openssl man-db bsdextrautils

.PHONY: setup system-deps test-deps demo test bench e2e lock deb e2e-debian clean

# apt_install PACKAGES,WHY: install what dpkg does not have yet (sudo unless root).
define apt_install
	@if ! dpkg -s $(1) >/dev/null 2>&1; then \
	  echo "installing $(1) ($(2))"; \
	  SUDO=; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(1); \
	fi
endef

system-deps:
	$(call apt_install,$(APT_PACKAGES),needed to build python-lzo)
	$(call apt_install,$(RUNTIME_APT_PACKAGES),needed by stripedump mount)

test-deps:
	$(call apt_install,$(TEST_APT_PACKAGES),readers that check the kdump output; ssh targets)
	@# Installing openssh-server starts the system's sshd where an init system runs; the tests need
	@# only the binary (they run their own), so an sshd that this install started is stopped again,
	@# with systemctl where systemd runs, else through its pid file (a chroot has no systemd).
	@# A system sshd that was there before is left alone.
	@if ! dpkg -s openssh-server >/dev/null 2>&1; then \
	  echo "installing openssh-server (the tests' own sshd hosts)"; \
	  SUDO=; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends openssh-server; \
	  if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then \
	    $$SUDO systemctl stop ssh.service ssh.socket 2>/dev/null || true; \
	  fi; \
	  if [ -f /run/sshd.pid ] && $$SUDO kill -0 "$$(cat /run/sshd.pid)" 2>/dev/null; then \
	    echo "stopping the system sshd that installing openssh-server started"; \
	    $$SUDO kill "$$(cat /run/sshd.pid)"; \
	  fi; \
	fi

# dist/requirements.lock pins the runtime dependencies: the tests run with the versions that
# the Debian package and every packed capture initramfs hold (`make lock` renews it).
LOCK = dist/requirements.lock

$(VENV)/.installed: pyproject.toml $(LOCK) | system-deps
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c $(LOCK) -e '.[test]'
	touch $@

setup: system-deps $(VENV)/.installed

demo: setup
	mkdir -p $(DEMO)
	rm -f $(DEMO)/member0.sd $(DEMO)/member1.sd $(DEMO)/vmcore.joined
	$(PY) -m stripedump.tools.synth $(DEMO)/vmcore --size $(DEMO_SIZE)
	$(SD) dump --disks $(DEMO)/member0.sd,$(DEMO)/member1.sd --codec lz4 $(DEMO)/vmcore
	$(SD) info $(DEMO)/member1.sd $(DEMO)/member0.sd
	$(SD) join $(DEMO)/member1.sd $(DEMO)/member0.sd -o $(DEMO)/vmcore.joined
	cmp $(DEMO)/vmcore $(DEMO)/vmcore.joined
	@echo "demo: the joined vmcore is byte-for-byte identical to the source"

test: setup test-deps
	$(PY) -m pytest -q

# Not part of `make test`: boots Debian's kernel under QEMU (TCG), crashes it,
# runs stripedump on /proc/vmcore in the kdump capture kernel and checks the
# join against a raw copy (tests/e2e/capture-kernel.sh; root, 2-3 minutes).
# Twice: Python from the host root over 9p, then packed into the initramfs.
e2e: setup
	STRIPEDUMP=$(abspath $(SD)) E2E_PYTHON=9p tests/e2e/capture-kernel.sh
	STRIPEDUMP=$(abspath $(SD)) E2E_PYTHON=initramfs tests/e2e/capture-kernel.sh

# Renew dist/requirements.lock from pyproject.toml's dependencies as pip resolves them today for
# Debian 12's python3 (3.11): every runtime dependency, pinned (not stripedump, pip, setuptools).
lock: system-deps
	rm -rf build/lock-venv
	/usr/bin/python3 -m venv build/lock-venv
	build/lock-venv/bin/pip install -q .
	{ sed -n '/^#/p' $(LOCK); build/lock-venv/bin/pip freeze --all | grep -v -i -e '^stripedump[= @]' -e '^pip==' -e '^setuptools=='; } >$(LOCK).new
	mv $(LOCK).new $(LOCK)
	rm -rf build/lock-venv
	@git diff --stat -- $(LOCK) 2>/dev/null || true

# The Debian package, built by dpkg-buildpackage in a copy of the checkout (build/deb/src: the
# tracked and untracked-but-not-ignored files) and checked with lintian (its report:
# build/deb/lintian.txt; no errors allowed, the warnings kept are listed in docs/kdump.md).
DEB_BUILD_PACKAGES = debhelper dpkg-dev python3.11-venv python3.11-dev liblzo2-dev lintian
DEB_VERSION = $(shell sed -n '1s/^[^(]*(\([^)]*\)).*/\1/p' debian/changelog)
DEB_ARCH = $(shell dpkg --print-architecture)
DEB = stripedump_$(DEB_VERSION)_$(DEB_ARCH).deb

deb:
	$(call apt_install,$(DEB_BUILD_PACKAGES),needed to build the Debian package)
	rm -rf build/deb && mkdir -p build/deb/src
	git ls-files -z --cached --others --exclude-standard | tar --null -T - --ignore-failed-read -cf - | tar -xf - -C build/deb/src
	cd build/deb/src && PIP_CACHE_DIR=$(abspath build/pip-cache-deb) dpkg-buildpackage -b -us -uc >../build.log 2>&1 \
	  || { tail -n 30 ../build.log; exit 1; }
	cp build/deb/$(DEB) $(DEB)
	lintian --info --fail-on error $(DEB) >build/deb/lintian.txt 2>&1 || { cat build/deb/lintian.txt; exit 1; }
	@cat build/deb/lintian.txt
	@# the package's venv, unpacked, run with this machine's python3.11 (its relative link)
	rm -rf build/deb/root && dpkg-deb -x $(DEB) build/deb/root
	mkdir -p build/deb/root/usr/bin && ln -sf /usr/bin/python3.11 build/deb/root/usr/bin/python3.11
	build/deb/root/usr/lib/stripedump/venv/bin/python3 -I dist/deb-smoke.py build/deb/smoke
	@echo "deb: $(DEB) ($$(du -k $(DEB) | cut -f1) KiB); lintian: no errors ($$(grep -c '^W:' build/deb/lintian.txt) warnings, build/deb/lintian.txt)"

# Not part of `make test`: the package in a Debian 12 VM under kdump-tools, crashed three times
# (stripedump saves the dump; a target missing, makedumpfile saves it; the dracut module as the
# capture initramfs), the dumps read back with crash (tests/e2e/debian-vm.sh; root; the image,
# the debug vmlinux and the KVM verdict are cached in /var/cache/stripedump-e2e; about 15 minutes
# from that cache under TCG, 25 without it).
e2e-debian: setup deb
	STRIPEDUMP=$(abspath $(SD)) E2E_DEB=$(abspath $(DEB)) tests/e2e/debian-vm.sh

clean:
	rm -rf $(VENV) $(DEMO) .pytest_cache build *.egg-info
