"""The VMCOREINFO note, typed: what the dumped kernel says about itself.

Why this module:
* A capture kernel has no vmlinux, so everything the dump levels need (where
  the page tables and ``mem_section`` are, the layout of ``struct page``, the
  page-flag bit numbers) comes from the text note the kernel wrote at boot
  (kernel/crash_core.c, arch/x86/kernel/machine_kexec_64.c).  Its lines are
  ``KEY=VALUE``; the keys ``SYMBOL(x)``, ``OFFSET(s.m)``, ``SIZE(s)``,
  ``NUMBER(x)`` and ``LENGTH(x)`` carry integers, a few plain keys carry
  strings or integers.
* Each value is parsed by the rule its printf format implies, once, here:
  ``SYMBOL`` is ``%lx`` (hex, no 0x); ``OFFSET``/``SIZE``/``LENGTH`` are
  ``%lu``; ``NUMBER`` is ``%ld`` (signed decimal: ``NUMBER(phys_base)`` is
  negative under KASLR; arm64 prints some as ``0x%llx``, so a value that is
  not decimal is tried as hex, like makedumpfile's ``read_vmcoreinfo_long``);
  ``KERNELOFFSET`` is ``%lx``; ``PAGESIZE`` and ``CRASHTIME`` decimal.
* ``SYMBOL()`` values are run-time addresses (``(unsigned long)&sym``), KASLR
  already applied: ``KERNELOFFSET`` is only for tools that bring a vmlinux
  with link-time addresses (``SYMBOL(_stext) - KERNELOFFSET`` is the link
  address of ``_stext``); nothing here adds it again.
* A dump level that lacks an entry must say which one and fall back, never
  guess: ``need()`` names exactly the missing (or unparsable) entries, and
  ``without()`` makes the reduced copies the tests use to prove each fallback.
"""

from __future__ import annotations

from dataclasses import dataclass, field

_INT_KINDS = ("SYMBOL", "OFFSET", "SIZE", "NUMBER", "LENGTH")


def _parse_value(key: str, value: str) -> int | None:
    kind = key.partition("(")[0]
    try:
        if kind == "SYMBOL" or key == "KERNELOFFSET":
            return int(value, 16)
        if kind == "NUMBER":
            try:
                return int(value, 10)
            except ValueError:
                return int(value, 16)
        return int(value, 10)
    except ValueError:
        return None


@dataclass(frozen=True)
class VmcoreInfo:
    """The parsed note: ``values`` keyed by the note's own spelling, e.g. ``"OFFSET(page.flags)"``.

    ``text`` holds every line as a string; ``values`` the integer entries that
    parsed; ``bad`` the keys whose value did not parse (they count as missing).
    """
    text: dict[str, str] = field(default_factory=dict)
    values: dict[str, int] = field(default_factory=dict)
    bad: frozenset = frozenset()

    @classmethod
    def parse(cls, raw: bytes | str) -> "VmcoreInfo":
        if isinstance(raw, bytes):
            raw = raw.decode("ascii", "replace")
        text, values, bad = {}, {}, set()
        for line in raw.splitlines():
            key, sep, val = line.partition("=")
            key, val = key.strip(), val.strip()
            if not sep or not key:
                continue
            text[key] = val
            if key.partition("(")[0] in _INT_KINDS or key in ("KERNELOFFSET", "PAGESIZE", "CRASHTIME"):
                v = _parse_value(key, val)
                if v is None:
                    bad.add(key)
                else:
                    values[key] = v
        return cls(text, values, frozenset(bad))

    @classmethod
    def from_source(cls, src) -> "VmcoreInfo":
        """The VMCOREINFO note of an opened vmcore.Source (empty when it has none)."""
        return cls.parse(src.info.vmcoreinfo_raw)

    # -- lookups: None when absent -------------------------------------------
    def get(self, key: str) -> int | None:
        return self.values.get(key)

    def symbol(self, name: str) -> int | None:
        return self.values.get(f"SYMBOL({name})")

    def offset(self, name: str) -> int | None:
        return self.values.get(f"OFFSET({name})")

    def size(self, name: str) -> int | None:
        return self.values.get(f"SIZE({name})")

    def number(self, name: str) -> int | None:
        return self.values.get(f"NUMBER({name})")

    def length(self, name: str) -> int | None:
        return self.values.get(f"LENGTH({name})")

    @property
    def osrelease(self) -> str | None:
        return self.text.get("OSRELEASE")

    @property
    def page_size(self) -> int | None:
        return self.values.get("PAGESIZE")

    @property
    def kerneloffset(self) -> int | None:
        return self.values.get("KERNELOFFSET")

    @property
    def crashtime(self) -> int | None:
        return self.values.get("CRASHTIME")

    def need(self, *keys: str) -> tuple[str, ...]:
        """The keys among ``keys`` that are absent or did not parse, in the order given."""
        return tuple(k for k in keys if k not in self.values and k not in self.text or k in self.bad)

    def without(self, *keys: str) -> "VmcoreInfo":
        """A copy with ``keys`` removed: what a kernel that does not export them would give."""
        drop = set(keys)
        return VmcoreInfo({k: v for k, v in self.text.items() if k not in drop},
                          {k: v for k, v in self.values.items() if k not in drop},
                          frozenset(self.bad - drop))
