"""Protocol messages as the JSON Triton's HTTP API writes: field names as in the .proto files,
every field present (zero values included), 64-bit integers as numbers (protobuf's own JSON
mapping writes them as strings, which clients reading counts and dims do not expect)."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

_WIDE = {
    FieldDescriptor.TYPE_INT64,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_FIXED64,
    FieldDescriptor.TYPE_SFIXED64,
}


def to_json(message: Message) -> dict[str, Any]:
    form = json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return _numbers(form, message.DESCRIPTOR)


def _numbers(form: dict[str, Any], descriptor: Descriptor) -> dict[str, Any]:
    for field in descriptor.fields:
        if field.name not in form:
            continue
        value = form[field.name]
        if field.message_type is not None:
            entry = field.message_type
            if entry.GetOptions().map_entry:
                value_field = entry.fields_by_name["value"]
                if value_field.message_type is not None:
                    for key, item in value.items():
                        value[key] = _numbers(item, value_field.message_type)
                elif value_field.type in _WIDE:
                    form[field.name] = {k: int(v) for k, v in value.items()}
            elif isinstance(value, list):
                form[field.name] = [_numbers(item, entry) for item in value]
            else:
                form[field.name] = _numbers(value, entry)
        elif field.type in _WIDE:
            form[field.name] = [int(v) for v in value] if isinstance(value, list) else int(value)
    return form
