"""Checks a response document against the official botocore output shape, strictly.

Independent of Fleetport's Rust code: it reads the model through botocore's own loader. Every
member must exist in the shape (no extras), have the modeled type, and enums must hold a
modeled value; required members must be present.
"""
import botocore.session

_session = botocore.session.get_session()
_models = {}


def model(service):
    if service not in _models:
        _models[service] = _session.get_service_model(service)
    return _models[service]


class Drift(AssertionError):
    pass


def check(service, operation, response):
    op = model(service).operation_model(operation)
    body = {k: v for k, v in response.items() if k != "ResponseMetadata"}
    if op.output_shape is None:
        if body:
            raise Drift(f"{operation} has no output shape but returned {sorted(body)}")
        return
    _check(op.output_shape, body, operation)


def check_raw(service, operation, document):
    """For raw JSON documents (timestamps as numbers, as they are on the wire)."""
    op = model(service).operation_model(operation)
    _check(op.output_shape, document, operation, raw=True)


def _check(shape, value, path, raw=False):
    t = shape.type_name
    if t == "structure":
        if not isinstance(value, dict):
            raise Drift(f"{path}: expected structure, got {type(value).__name__}")
        for name in value:
            if name not in shape.members:
                raise Drift(f"{path}: member {name!r} is not in shape {shape.name}")
        for req in shape.required_members:
            if req not in value:
                raise Drift(f"{path}: required member {req!r} missing")
        for name, v in value.items():
            if v is None:
                raise Drift(f"{path}.{name}: null is never sent; omit the member")
            _check(shape.members[name], v, f"{path}.{name}", raw)
    elif t == "list":
        if not isinstance(value, list):
            raise Drift(f"{path}: expected list")
        for i, v in enumerate(value):
            _check(shape.member, v, f"{path}[{i}]", raw)
    elif t == "map":
        if not isinstance(value, dict):
            raise Drift(f"{path}: expected map")
        for k, v in value.items():
            _check(shape.key, k, f"{path}.<key>", raw)
            _check(shape.value, v, f"{path}.{k}", raw)
    elif t == "string":
        if not isinstance(value, str):
            raise Drift(f"{path}: expected string, got {value!r}")
        if shape.enum and value not in shape.enum:
            raise Drift(f"{path}: {value!r} is not one of {shape.enum}")
    elif t in ("integer", "long"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise Drift(f"{path}: expected integer, got {value!r}")
    elif t in ("double", "float"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise Drift(f"{path}: expected number, got {value!r}")
    elif t == "boolean":
        if not isinstance(value, bool):
            raise Drift(f"{path}: expected boolean")
    elif t == "timestamp":
        import datetime

        ok = isinstance(value, (int, float)) if raw else isinstance(value, datetime.datetime)
        if not ok or isinstance(value, bool):
            raise Drift(f"{path}: expected timestamp, got {value!r}")
    elif t == "blob":
        if not isinstance(value, (bytes, str)):
            raise Drift(f"{path}: expected blob")
