"""Typed, frozen models for the IR: the part of pydantic's model API the compiler uses,
spelled the same, without pydantic's start-up cost.

Why not pydantic itself: importing it and defining the IR's two dozen models took about
330 ms of every `pipec check` (issue 14 asks for at most 250 ms in all), and the
language server and the compiler pay it too. A model class here costs nothing to
define; its validator is made from the declared annotations when the class is first
built, in well under a millisecond.

A model gets, as with pydantic:

* fields declared by annotations, with a default, or ``Field(default, ge=, gt=, le=,
  lt=, default_factory=)``; ``ClassVar`` annotations are not fields;
* validation when built: ``Literal``, ``int``, ``float``, ``str``, ``bool``, ``Any``,
  ``X | None``, unions (tagged by ``Annotated[..., Field(discriminator=...)]``, else
  tried in order), ``list[...]``, ``tuple[...]``, ``dict[..., ...]``, nested models
  (built from a dict too). Numbers are coerced as pydantic's lax mode does (an int for
  a float field, an integral float or a bool for an int field); unknown fields are
  refused; defaults are not validated; ``@model_validator(mode="before"|"after")`` and
  ``@field_validator(name)`` run where pydantic runs them. A failure raises
  :class:`ValidationError`, a ``ValueError`` that names the model and the field;
* frozen instances (``model_config = ConfigDict(frozen=True)``), ``==`` by type and
  fields, ``hash``, the same ``repr``, pickling;
* ``model_dump(mode="python" | "json")`` (shaped by a ``@model_serializer(mode="wrap")``
  method where the model has one), ``model_copy(update=...)`` (not validated,
  as in pydantic), ``model_validate(data)``, ``model_fields``;
* ``TypeAdapter(T).validate_python(data)`` for a type that is not a model (the tagged
  union of every op, for :meth:`pipec.compiler.ir.IR.from_json`).

Anything else pydantic offers is not here; a model that needs it raises at once
(``Field`` refuses unknown arguments) rather than being silently half-checked.
"""

from __future__ import annotations

import functools
import math
import sys
import types
import typing
from typing import Annotated, Any, Callable, ClassVar, Literal, Union, get_args, get_origin

__all__ = ["BaseModel", "ConfigDict", "Field", "FieldInfo", "TypeAdapter", "ValidationError",
           "field_validator", "model_serializer", "model_validator"]

_MISSING = object()


class ValidationError(ValueError):
    """A model was built from values its declaration refuses."""


class FieldInfo:
    """What ``Field(...)`` declares about one field."""

    __slots__ = ("default", "default_factory", "ge", "gt", "le", "lt", "discriminator", "description", "annotation")

    def __init__(self, default: Any = _MISSING, *, default_factory: Callable[[], Any] | None = None,
                 ge=None, gt=None, le=None, lt=None, discriminator: str | None = None,
                 description: str | None = None):
        self.default, self.default_factory = default, default_factory
        self.ge, self.gt, self.le, self.lt = ge, gt, le, lt
        self.discriminator, self.description = discriminator, description
        self.annotation: Any = None

    def is_required(self) -> bool:
        """Whether the field has neither a default nor a default factory."""
        return self.default is _MISSING and self.default_factory is None

    def __repr__(self) -> str:
        return f"FieldInfo(annotation={self.annotation!r}, required={self.is_required()})"


def Field(default: Any = _MISSING, **options) -> Any:
    """Declare a field's default and constraints (see :class:`FieldInfo`)."""
    return FieldInfo(default, **options)


def ConfigDict(**options) -> dict:
    """A model's configuration: ``frozen`` and ``extra`` (``"forbid"`` or ``"ignore"``)
    are honoured; ``defer_build`` is accepted (every validator is made on first use)."""
    unknown = set(options) - {"frozen", "extra", "defer_build"}
    if unknown:
        raise TypeError(f"unsupported model configuration: {', '.join(sorted(unknown))}")
    return options


class _Marked:
    """A validator function, marked by :func:`model_validator` or :func:`field_validator`."""

    def __init__(self, kind: str, fn, fields: tuple[str, ...] = ()):
        self.kind, self.fields = kind, fields
        self.fn = fn.__func__ if isinstance(fn, (classmethod, staticmethod)) else fn


def model_validator(*, mode: str):
    """``mode="after"``: ``fn(self)`` checks the built model (and returns it);
    ``mode="before"``: ``fn(cls, data)`` turns the raw input dict into the one to build."""
    if mode not in ("before", "after"):
        raise TypeError(f"unsupported model_validator mode {mode!r}")
    return lambda fn: _Marked(f"model_{mode}", fn)


def field_validator(*fields: str, mode: str = "after"):
    """``fn(cls, value)`` checks (and returns) the value of each of ``fields`` after
    (or, ``mode="before"``, instead of before) its type is checked."""
    if mode not in ("before", "after"):
        raise TypeError(f"unsupported field_validator mode {mode!r}")
    return lambda fn: _Marked(f"field_{mode}", fn, fields)


def model_serializer(*, mode: str):
    """``mode="wrap"``: ``fn(self, handler)`` gives the model's dumped form;
    ``handler(self)`` is the default one (a dict of the dumped fields) to adjust."""
    if mode != "wrap":
        raise TypeError(f"unsupported model_serializer mode {mode!r}")
    return lambda fn: _Marked("serializer", fn)


class _Invalid(Exception):
    """Raised by a value check; the model turns it into a ValidationError with the field."""


class _ClassProperty:
    def __init__(self, fn):
        self.fn = fn

    def __get__(self, obj, cls):
        return self.fn(cls)


class BaseModel:
    """A typed model: see the module docstring."""

    model_config: ClassVar[dict] = {}

    def __init__(self, **data):
        schema = type(self).__dict__.get("__model_schema__") or _Schema.of(type(self))
        object.__setattr__(self, "__dict__", schema.build(data))
        for check in schema.after:
            try:
                check(self)
            except (ValueError, AssertionError) as exc:
                if isinstance(exc, ValidationError):
                    raise
                raise ValidationError(f"{type(self).__name__}: {exc}") from None

    @_ClassProperty
    def model_fields(cls) -> dict[str, FieldInfo]:
        """Field name -> :class:`FieldInfo`, in declaration order (base classes first)."""
        return _Schema.of(cls).fields

    @classmethod
    def model_validate(cls, data):
        """``data`` as a ``cls``: a ``cls`` as it is, a dict built (nested dicts too)."""
        if isinstance(data, cls):
            return data
        if not isinstance(data, dict):
            raise ValidationError(f"{cls.__name__}: expected a dict, got {type(data).__name__}")
        return cls(**data)

    def model_copy(self, *, update: dict | None = None, deep: bool = False):
        """A copy with ``update`` applied; like pydantic, the update is not validated."""
        if deep:
            import copy
            return copy.deepcopy(self).model_copy(update=update)
        new = object.__new__(type(self))
        values = dict(self.__dict__)
        if update:
            values.update(update)
        object.__setattr__(new, "__dict__", values)
        return new

    def model_dump(self, *, mode: str = "python") -> dict:
        """The fields as a dict, nested models as dicts; ``mode="json"`` gives only JSON
        types (lists for tuples and sets, None for an infinite or NaN float)."""
        return _dump_model(self, mode == "json")

    def __setattr__(self, name, value):
        if _Schema.of(type(self)).frozen:
            raise ValidationError(f"{type(self).__name__} is frozen: `{name}` cannot be set")
        object.__setattr__(self, name, value)

    def __delattr__(self, name):
        raise ValidationError(f"{type(self).__name__}: `{name}` cannot be deleted")

    def __eq__(self, other):
        if not isinstance(other, BaseModel):
            return NotImplemented
        return type(self) is type(other) and self.__dict__ == other.__dict__

    def __hash__(self):
        if not _Schema.of(type(self)).frozen:
            raise TypeError(f"unhashable type: {type(self).__name__!r}")
        return hash((type(self), *self.__dict__.values()))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.__dict__.items())})"

    def __str__(self) -> str:
        return " ".join(f"{k}={v!r}" for k, v in self.__dict__.items())


class TypeAdapter:
    """Validate values of a type that is not a model (a union of models, say)."""

    def __init__(self, tp):
        self.tp = tp
        self._check = None

    def validate_python(self, value):
        """``value`` checked (and built, for models) as the adapter's type."""
        if self._check is None:
            self._check = _checker(self.tp, sys.modules.get(getattr(self.tp, "__module__", ""), None))
        try:
            return self._check(value)
        except _Invalid as exc:
            raise ValidationError(f"invalid {self.tp!r}: {exc}") from None


class _Schema:
    """One model class's fields and checks, made from its annotations on first use."""

    @staticmethod
    def of(cls) -> "_Schema":
        schema = cls.__dict__.get("__model_schema__")
        if schema is None:
            schema = _Schema(cls)
            cls.__model_schema__ = schema
        return schema

    def __init__(self, cls):
        self.name = cls.__name__
        config: dict = {}
        for klass in reversed(cls.__mro__):
            config.update(klass.__dict__.get("model_config", {}))
        self.frozen = bool(config.get("frozen", False))
        self.forbid = config.get("extra", "ignore") == "forbid"
        hints = typing.get_type_hints(cls, include_extras=True)
        marked = [m for klass in reversed(cls.__mro__) for m in klass.__dict__.values() if isinstance(m, _Marked)]
        self.before = [functools.partial(m.fn, cls) for m in marked if m.kind == "model_before"]
        self.after = [m.fn for m in marked if m.kind == "model_after"]
        serializers = [m.fn for m in marked if m.kind == "serializer"]
        self.serializer = serializers[-1] if serializers else None  # the subclass's wins
        self.fields: dict[str, FieldInfo] = {}
        self.template: dict[str, Any] = {}  # name -> default, in field order
        self.mutable: list[str] = []  # defaults copied for each instance
        self.required: list[str] = []
        self.checks: dict[str, Callable | None] = {}
        self.plans: dict[str, tuple[frozenset, Callable | None]] = {}  # name -> (exact types, check)
        self.factories: dict[str, Callable] = {}
        for name, hint in hints.items():
            if get_origin(hint) is ClassVar or name.startswith("_") or hint is ClassVar:
                continue
            owner = next(k for k in cls.__mro__ if name in k.__dict__.get("__annotations__", {}))
            declared = owner.__dict__.get(name, _MISSING)
            info = declared if isinstance(declared, FieldInfo) else FieldInfo(declared)
            info.annotation = hint
            self.fields[name] = info
            self.template[name] = info.default
            if info.default_factory is not None:
                self.factories[name] = info.default_factory
            elif info.default is _MISSING:
                self.required.append(name)
            elif isinstance(info.default, (list, dict, set)):
                self.mutable.append(name)
            validators = [m for m in marked if name in m.fields]
            self.checks[name] = _field_check(name, hint, info, validators, cls)
            # The types a value may have to be taken as it is, without calling the check:
            # most values are built right by the compiler, and this keeps building cheap.
            plain = not validators and all(x is None for x in (info.ge, info.gt, info.le, info.lt))
            self.plans[name] = (_exact_types(hint) if plain else frozenset(), self.checks[name])

    def build(self, data: dict) -> dict:
        """The instance dict for ``data``: checked values over the defaults."""
        for before in self.before:
            data = before(data)
        values = self.template.copy()
        for name in self.mutable:
            if name not in data:
                values[name] = values[name].copy()
        for name, make in self.factories.items():
            if name not in data:
                values[name] = make()
        plans = self.plans
        for name, value in data.items():
            plan = plans.get(name)
            if plan is None:
                if self.forbid:
                    raise ValidationError(f"{self.name}: unknown field `{name}`")
                continue
            exact, check = plan
            if check is not None and type(value) not in exact:
                try:
                    value = check(value)
                except _Invalid as exc:
                    raise ValidationError(f"{self.name}.{name}: {exc}") from None
            values[name] = value
        for name in self.required:
            if name not in data:
                raise ValidationError(f"{self.name}: field `{name}` is required")
        return values


def _field_check(name: str, hint, info: FieldInfo, validators: list[_Marked], cls) -> Callable | None:
    """The check of one field: its type, then its bounds, then its validators (None when
    anything goes, so building skips it)."""
    check = _checker(hint, sys.modules.get(cls.__module__))
    bounds = [(op, limit) for op, limit in (("ge", info.ge), ("gt", info.gt), ("le", info.le), ("lt", info.lt))
              if limit is not None]
    before = [m.fn for m in validators if m.kind == "field_before"]
    after = [m.fn for m in validators if m.kind == "field_after"]
    if not (bounds or before or after):
        return check

    def checked(value):
        for fn in before:
            value = _run(fn, cls, value)
        if check is not None:
            value = check(value)
        for op, limit in bounds:
            if value is not None and not _BOUNDS[op](value, limit):
                raise _Invalid(f"should be {_BOUND_WORDS[op]} {limit}, not {value!r}")
        for fn in after:
            value = _run(fn, cls, value)
        return value
    return checked


_BOUNDS = {"ge": lambda v, x: v >= x, "gt": lambda v, x: v > x, "le": lambda v, x: v <= x, "lt": lambda v, x: v < x}
_BOUND_WORDS = {"ge": "at least", "gt": "greater than", "le": "at most", "lt": "less than"}


def _run(fn, cls, value):
    try:
        return fn(cls, value)
    except (ValueError, AssertionError) as exc:
        raise _Invalid(str(exc)) from None


def _checker(tp, module) -> Callable | None:
    """A function that checks (and, where pydantic coerces, converts) a value of type
    ``tp``, raising _Invalid; None for ``Any``."""
    if tp is Any or tp is object:
        return None
    origin, args = get_origin(tp), get_args(tp)
    if origin is Annotated:
        tag = next((m.discriminator for m in tp.__metadata__ if isinstance(m, FieldInfo) and m.discriminator), None)
        return _union(get_args(args[0]), tag, module) if tag else _checker(args[0], module)
    if origin is Literal:
        return _literal(args)
    if origin is Union or origin is types.UnionType:
        return _union(args, None, module)
    if origin in (list, tuple, set, frozenset, dict):
        return _container(origin, args, module)
    if tp is type(None):
        return _none
    if tp in _SCALARS:
        return _SCALARS[tp]
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return _model(tp)
    if isinstance(tp, type):
        def instance(value):
            if not isinstance(value, tp):
                raise _Invalid(f"should be a {tp.__name__}, not {value!r}")
            return value
        return instance
    raise TypeError(f"unsupported field type {tp!r}")


def _exact_types(tp) -> frozenset:
    """The types whose values ``tp``'s check takes unchanged, without looking inside."""
    origin, args = get_origin(tp), get_args(tp)
    if origin is Annotated:
        tag = next((m.discriminator for m in tp.__metadata__ if isinstance(m, FieldInfo) and m.discriminator), None)
        return frozenset(get_args(args[0])) if tag else _exact_types(args[0])
    if origin is Union or origin is types.UnionType:
        parts = [_exact_types(m) for m in args]
        return frozenset().union(*parts) if all(parts) else frozenset()
    if tp is type(None) or tp in _SCALARS:
        return frozenset({tp})
    if isinstance(tp, type) and issubclass(tp, BaseModel) and get_origin(tp) is None:
        return frozenset({tp})
    return frozenset()


def _none(value):
    if value is not None:
        raise _Invalid(f"should be none, not {value!r}")
    return value


def _int(value):
    if type(value) is int:
        return value
    if isinstance(value, int):  # bool and int subclasses, as pydantic's lax mode
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise _Invalid(f"should be an integer, not {value!r}")


def _float(value):
    if type(value) is float:
        return value
    if isinstance(value, (int, float)):
        return float(value)
    raise _Invalid(f"should be a number, not {value!r}")


def _str(value):
    if type(value) is str:
        return value
    if isinstance(value, str):  # a lark Token, say: kept as the plain string
        return str(value)
    raise _Invalid(f"should be a string, not {value!r}")


def _bool(value):
    if value is True or value is False:
        return value
    if type(value) is int and value in (0, 1):
        return bool(value)
    raise _Invalid(f"should be a boolean, not {value!r}")


_SCALARS = {int: _int, float: _float, str: _str, bool: _bool}


def _literal(allowed: tuple):
    options = frozenset(allowed)

    def literal(value):
        try:
            if value in options and any(type(value) is type(a) for a in allowed):
                return value
        except TypeError:  # unhashable
            pass
        raise _Invalid(f"should be one of {', '.join(repr(a) for a in allowed)}, not {value!r}")
    return literal


def _built(cls, data: dict):
    """Model ``cls`` built from ``data``; its refusal becomes the enclosing field's."""
    try:
        return cls(**data)
    except ValidationError as exc:
        raise _Invalid(str(exc)) from None


def _model(cls):
    def model(value):
        if isinstance(value, cls):
            return value
        if isinstance(value, dict):
            return _built(cls, value)
        raise _Invalid(f"should be a {cls.__name__}, not {value!r}")
    return model


def _union(members: tuple, tag: str | None, module) -> Callable | None:
    optional = type(None) in members
    members = tuple(m for m in members if m is not type(None))
    if tag is not None:
        by_tag = {value: m for m in members for value in get_args(_Schema.of(m).fields[tag].annotation)}
        classes = tuple(members)

        def tagged(value):
            if value is None and optional:
                return None
            if isinstance(value, classes):
                return value
            if isinstance(value, dict):
                cls = by_tag.get(value.get(tag))
                if cls is None:
                    raise _Invalid(f"`{tag}` should be one of {', '.join(map(repr, by_tag))}, not {value.get(tag)!r}")
                return _built(cls, value)
            raise _Invalid(f"should be one of {', '.join(m.__name__ for m in members)}, not {value!r}")
        return tagged
    checks = [_checker(m, module) for m in members]
    if any(c is None for c in checks):
        return None
    if len(checks) == 1:
        only = checks[0]
        if not optional:
            return only
        return lambda value: None if value is None else only(value)
    exact = tuple(m for m in members if isinstance(m, type) and get_origin(m) is None)

    def either(value):
        if value is None and optional:
            return None
        if type(value) in exact:  # an exact match wins, as in pydantic's smart mode
            return value
        for check in checks:
            try:
                return check(value)
            except _Invalid:
                pass
        raise _Invalid(f"should be {' or '.join(getattr(m, '__name__', repr(m)) for m in members)}, not {value!r}")
    return either


def _container(origin, args: tuple, module) -> Callable:
    if origin is dict:
        key = _checker(args[0], module) if args else None
        item = _checker(args[1], module) if len(args) > 1 else None

        def mapping(value):
            if not isinstance(value, dict):
                raise _Invalid(f"should be a dict, not {value!r}")
            if key is None and item is None:
                return dict(value)
            return {(k if key is None else key(k)): (v if item is None else item(v)) for k, v in value.items()}
        return mapping
    if origin is tuple and args and args[-1] is not Ellipsis:
        parts = [_checker(a, module) for a in args]

        def fixed(value):
            if not isinstance(value, (list, tuple)) or len(value) != len(parts):
                raise _Invalid(f"should be a tuple of {len(parts)}, not {value!r}")
            return tuple(v if c is None else c(v) for c, v in zip(parts, value))
        return fixed
    item = _checker(args[0], module) if args else None
    accepted = (list, tuple, set, frozenset) if origin in (list, tuple) else (list, tuple, set, frozenset)

    def sequence(value):
        if not isinstance(value, accepted) or isinstance(value, (str, bytes)):
            raise _Invalid(f"should be a {origin.__name__}, not {value!r}")
        return origin(value) if item is None else origin(item(v) for v in value)
    return sequence


def _dump_model(model: "BaseModel", json: bool):
    def handler(m):
        return {k: _dump(v, json) for k, v in m.__dict__.items()}
    serializer = _Schema.of(type(model)).serializer
    return handler(model) if serializer is None else serializer(model, handler)


def _dump(value, json: bool):
    if isinstance(value, BaseModel):
        return _dump_model(value, json)
    if isinstance(value, list):
        return [_dump(v, json) for v in value]
    if isinstance(value, tuple):
        items = [_dump(v, json) for v in value]
        return items if json else tuple(items)
    if isinstance(value, dict):
        return {k: _dump(v, json) for k, v in value.items()}
    if json:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, (set, frozenset)):
            return [_dump(v, json) for v in value]
        if isinstance(value, bytes):
            return value.decode()
    return value
