"""Value objects for the package: ``@record`` -- the part of ``dataclasses`` we use, at no import cost.

Why not :mod:`dataclasses`: every sandboxed interpreter and every ``tv-sandbox run`` imports the
policy model, and ``import dataclasses`` (which pulls in ``inspect``, ``ast``, ``typing``, ``re``...)
costs 15-20 ms of a 50 ms start-up budget on a small machine. ``@record`` reads the class's
annotations (names only: the package uses ``from __future__ import annotations``) and its default
values, and adds ``__slots__``-free ``__init__``, ``__repr__``, ``__eq__`` and, for ``frozen``
records, ``__hash__`` and a ``__setattr__`` that refuses. :func:`replace` and :func:`asdict` mirror
their ``dataclasses`` namesakes. Type checkers see it as a dataclass (``dataclass_transform``).
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, TypeVar, dataclass_transform

    T = TypeVar("T")
else:

    def dataclass_transform(**_kw: object) -> Callable[[T], T]:
        return lambda f: f


_MISSING = object()


class _Field:
    __slots__ = ("compare", "default", "default_factory", "repr")

    def __init__(self, default: Any, default_factory: Any, compare: bool, repr: bool) -> None:
        self.default, self.default_factory, self.compare, self.repr = default, default_factory, compare, repr


def field(
    *, default: Any = _MISSING, default_factory: Any = _MISSING, compare: bool = True, repr: bool = True
) -> Any:
    """A field's options, as ``dataclasses.field``: a default or a factory, and whether it counts
    in ``==`` and shows in ``repr``."""
    return _Field(default, default_factory, compare, repr)


class FrozenRecordError(AttributeError):
    """Assignment to a field of a frozen record."""


def _frozen_setattr(self: object, name: str, value: object) -> None:
    raise FrozenRecordError(f"cannot assign to field {name!r} of frozen {type(self).__name__}")


@dataclass_transform(field_specifiers=(field,))
def record(cls: type[T] | None = None, *, frozen: bool = False) -> Any:
    """Class decorator: fields are the class's annotated names, in order (inherited ones first)."""

    def wrap(c: type[T]) -> type[T]:
        built: type[T] = _build(c, frozen)
        return built

    return wrap if cls is None else wrap(cls)


def _build(cls: Any, frozen: bool) -> Any:  # the class, completed
    fields: dict[str, _Field] = dict(getattr(cls, "__record_fields__", {}))
    for name, ann in cls.__dict__.get("__annotations__", {}).items():  # noqa: RUF063 - no inspect
        if str(ann).startswith("ClassVar"):
            continue
        value = cls.__dict__.get(name, _MISSING)
        f = value if isinstance(value, _Field) else _Field(value, _MISSING, True, True)
        fields[name] = f
        if isinstance(value, _Field):
            if f.default is _MISSING:
                delattr(cls, name)
            else:
                setattr(cls, name, f.default)
    names = tuple(fields)
    required = [n for n, f in fields.items() if f.default is _MISSING and f.default_factory is _MISSING]
    factories = {n: f.default_factory for n, f in fields.items() if f.default_factory is not _MISSING}
    setter = object.__setattr__

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        if len(args) > len(names):
            raise TypeError(f"{cls.__name__}() takes {len(names)} positional arguments, {len(args)} given")
        for name, value in zip(names, args, strict=False):
            if name in kwargs:
                raise TypeError(f"{cls.__name__}() got multiple values for argument {name!r}")
            kwargs[name] = value
        for name in names:
            if name in kwargs:
                setter(self, name, kwargs.pop(name))
            elif name in factories:
                setter(self, name, factories[name]())
            elif name in required:
                raise TypeError(f"{cls.__name__}() missing required argument {name!r}")
            # else: the class attribute (the default) answers
        if kwargs:
            raise TypeError(f"{cls.__name__}() got an unexpected argument {next(iter(kwargs))!r}")
        post = getattr(self, "__post_init__", None)
        if post is not None:
            post()

    compared = tuple(n for n in names if fields[n].compare)

    def key(self: Any) -> tuple[Any, ...]:
        return tuple(getattr(self, n) for n in compared)

    def __eq__(self: Any, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return bool(key(self) == key(other))

    def __repr__(self: Any) -> str:
        shown = ", ".join(f"{n}={getattr(self, n)!r}" for n in names if fields[n].repr)
        return f"{cls.__qualname__}({shown})"

    cls.__record_fields__ = fields
    cls.__init__ = __init__
    cls.__eq__ = __eq__
    cls.__repr__ = __repr__
    if frozen:
        cls.__hash__ = lambda self: hash(key(self))
        cls.__setattr__ = _frozen_setattr
        cls.__delattr__ = _frozen_setattr
    else:
        cls.__hash__ = None  # mutable and compared by value, like a dataclass(eq=True)
    return cls


def replace(obj: T, **changes: Any) -> T:
    """A copy of record ``obj`` with ``changes`` applied (``dataclasses.replace``)."""
    fields: dict[str, _Field] = type(obj).__record_fields__  # type: ignore[attr-defined]
    for name in changes:
        if name not in fields:
            raise TypeError(f"{type(obj).__name__} has no field {name!r}")
    values = {n: changes[n] if n in changes else getattr(obj, n) for n in fields}
    return type(obj)(**values)


def asdict(obj: Any) -> dict[str, Any]:
    """The fields of a record as a dict, records nested in fields, lists, tuples and dicts included."""
    return {n: _plain(getattr(obj, n)) for n in type(obj).__record_fields__}


def _plain(v: Any) -> Any:
    if hasattr(type(v), "__record_fields__"):
        return asdict(v)
    if isinstance(v, (list, tuple)):
        return type(v)(_plain(x) for x in v)
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v
