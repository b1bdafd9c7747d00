"""Value classes for the dump path without dataclasses or NamedTuple.

Why (issue 12, the fixed cost of a small dump): ``import dataclasses`` pulls
in inspect, ast, dis and tokenize, and each ``@dataclass`` and NamedTuple
generates its methods with exec at import; ``typing`` is another import of
its own.  Together that was about a fifth of a 4 MiB dump's time
(docs/benchmarks.md, "Issue 12: fixed cost of a small dump").  What the code
used of them is small, so it is written here once:

* ``Plain``: a class that lists its fields in ``__slots__`` and writes its
  own ``__init__``; this base gives ``__eq__`` and ``__repr__`` over those
  fields (as a dataclass compares and prints), ``_replace(**changes)`` (a new
  instance through ``__init__``, so its checks run again, as
  ``dataclasses.replace``), and pickling.  ``Frozen`` adds immutability and a
  hash of the fields (a frozen dataclass).
* ``Record``: a tuple whose items have names, for the on-disk structs of
  format.py: ``_fields``, defaults, ``_replace``, ``_make``, ``_asdict`` and
  tuple unpacking as a NamedTuple has them, the fields read by C accessors
  (collections' own ``_tuplegetter``) and no exec.  A subclass names its
  fields in the class statement: ``class X(Record, fields=("a", "b"),
  defaults=(0,))`` and declares ``__slots__ = ()``.
"""

from __future__ import annotations

from operator import itemgetter

try:
    from _collections import _tuplegetter     # what collections.namedtuple uses
except ImportError:                            # pragma: no cover - other Pythons
    def _tuplegetter(index, doc):
        return property(itemgetter(index), doc=doc)


class Plain:
    __slots__ = ()

    def _values(self) -> tuple:
        return tuple(getattr(self, f) for f in self.__slots__)

    def __eq__(self, other):
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._values() == other._values()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{f}={getattr(self, f)!r}' for f in self.__slots__)})"

    def __reduce__(self):
        return type(self), self._values()

    def _replace(self, **changes):
        values = {f: changes.pop(f) if f in changes else getattr(self, f) for f in self.__slots__}
        if changes:
            raise TypeError(f"{type(self).__name__} has no field(s) {', '.join(changes)}")
        return type(self)(**values)


class Frozen(Plain):
    """A Plain whose fields are set once, by ``__init__`` through ``object.__setattr__``."""
    __slots__ = ()

    def __setattr__(self, name, value):
        raise AttributeError(f"cannot assign to field {name!r} of a frozen {type(self).__name__}")

    def __delattr__(self, name):
        raise AttributeError(f"cannot delete field {name!r} of a frozen {type(self).__name__}")

    def __hash__(self) -> int:
        return hash(self._values())


class Record(tuple):
    __slots__ = ()
    _fields: tuple = ()
    _field_defaults: dict = {}

    def __init_subclass__(cls, fields=None, defaults=(), **kw):
        super().__init_subclass__(**kw)
        if fields is None:
            return
        cls._fields = fields = tuple(fields)
        cls._field_defaults = dict(zip(fields[len(fields) - len(defaults):], defaults))
        for i, f in enumerate(fields):
            setattr(cls, f, _tuplegetter(i, f"field {i}: {f}"))

    def __new__(cls, *args, **kw):
        if kw or len(args) != len(cls._fields):
            args = cls._fill(args, kw)
        return tuple.__new__(cls, args)

    @classmethod
    def _fill(cls, args: tuple, kw: dict) -> tuple:
        fields = cls._fields
        if len(args) > len(fields):
            raise TypeError(f"{cls.__name__} takes {len(fields)} fields ({len(args)} given)")
        out = list(args)
        for f in fields[len(args):]:
            if f in kw:
                out.append(kw.pop(f))
            elif f in cls._field_defaults:
                out.append(cls._field_defaults[f])
            else:
                raise TypeError(f"{cls.__name__} is missing field {f!r}")
        if kw:
            raise TypeError(f"{cls.__name__} got unexpected or repeated field(s) {', '.join(kw)}")
        return tuple(out)

    @classmethod
    def _make(cls, iterable):
        return tuple.__new__(cls, cls._fill(tuple(iterable), {}))

    def _replace(self, **changes):
        unknown = changes.keys() - set(self._fields)
        if unknown:
            raise ValueError(f"{type(self).__name__} has no field(s) {', '.join(sorted(unknown))}")
        return tuple.__new__(type(self), [changes.get(f, v) for f, v in zip(self._fields, self)])

    def _asdict(self) -> dict:
        return dict(zip(self._fields, self))

    def __getnewargs__(self):
        return tuple(self)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{f}={v!r}' for f, v in zip(self._fields, self))})"
