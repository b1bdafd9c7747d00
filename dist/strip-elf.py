"""Strip the shared objects of a virtual environment, where stripping leaves them loadable.

    python3 dist/strip-elf.py SITE_PACKAGES      (debian/rules, in place of dh_strip)

Why not plain strip: the wheels' bundled libraries and some extension modules were
rewritten by auditwheel's patchelf, which moves segments; strip then writes LOAD
segments whose file offset and address no longer agree modulo the page size, and
the loader refuses the file ("ELF load command address/offset not page-aligned":
numpy's OpenBLAS, found by `make deb`'s dist/deb-smoke.py).  Each file is stripped
into a copy, the copy's LOAD segments are checked as the loader checks them, and
only a good copy replaces the file.  Prints the files kept unstripped.
"""

import os
import re
import subprocess
import sys

PAGE = 4096


def loads_aligned(path: str) -> bool:
    out = subprocess.run(["readelf", "-lW", path], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        f = line.split()
        if f and f[0] == "LOAD" and (int(f[1], 16) - int(f[2], 16)) % PAGE:
            return False
    return True


def main(top: str) -> int:
    kept = []
    for root, _, files in os.walk(top):
        for name in sorted(files):
            path = os.path.join(root, name)
            if os.path.islink(path) or not re.search(r"\.so(\.|$)", name):
                continue
            tmp = path + ".stripped"
            subprocess.run(["strip", "--strip-unneeded", "--remove-section=.comment", "--remove-section=.note",
                            "-o", tmp, path], check=True)
            if loads_aligned(tmp):
                os.chmod(tmp, os.stat(path).st_mode)
                os.replace(tmp, path)
            else:
                os.unlink(tmp)
                kept.append(os.path.relpath(path, top))
    for k in kept:
        print(f"strip-elf: kept unstripped (strip would misalign its segments): {k}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
