# stripedump: two commands on a fresh Debian/Ubuntu machine
#   make demo   set everything up, dump a synthetic vmcore over two members, join, compare
#   make test   set everything up and run the test suite
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
SD      = $(VENV)/bin/stripedump
DEMO   ?= demo-out
DEMO_SIZE ?= 512M
APT_PACKAGES = liblzo2-dev

.PHONY: setup system-deps demo test bench clean

# python-lzo builds from source and needs the LZO headers.
system-deps:
	@if ! dpkg -s $(APT_PACKAGES) >/dev/null 2>&1; then \
	  echo "installing $(APT_PACKAGES) (needed to build python-lzo)"; \
	  SUDO=; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PACKAGES); \
	fi

$(VENV)/.installed: pyproject.toml | system-deps
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

setup: system-deps $(VENV)/.installed

demo: setup
	mkdir -p $(DEMO)
	rm -f $(DEMO)/member0.sd $(DEMO)/member1.sd $(DEMO)/vmcore.joined
	$(PY) -m stripedump.synth $(DEMO)/vmcore --size $(DEMO_SIZE)
	$(SD) dump --disks $(DEMO)/member0.sd,$(DEMO)/member1.sd --codec lz4 $(DEMO)/vmcore
	$(SD) info $(DEMO)/member1.sd $(DEMO)/member0.sd
	$(SD) join $(DEMO)/member1.sd $(DEMO)/member0.sd -o $(DEMO)/vmcore.joined
	cmp $(DEMO)/vmcore $(DEMO)/vmcore.joined
	@echo "demo: the joined vmcore is byte-for-byte identical to the source"

test: setup
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) $(DEMO) .pytest_cache build *.egg-info
