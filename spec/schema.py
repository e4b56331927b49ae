"""JSON Schema of network and part files, generated from the pydantic models, for editors.

yaml-language-server (VS Code's YAML extension, Neovim, Helix, ...) completes and checks a file
that carries a modeline such as ``# yaml-language-server: $schema=schemas/network.schema.json``;
every built-in file does. The schema states what the models accept: its ``description`` texts are
the models' field descriptions, and a node's ``op`` is an enum of the op names, so an editor offers
them. The loader stays the authority: it also checks what a schema cannot (names a node reads,
expressions, shapes), with ``file:LINE:COL`` errors.
"""

from __future__ import annotations

import json
from typing import Any, Final, get_args

from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema

from rescompile.spec.expressions import Expression
from rescompile.spec.models import (
    EXPRESSION_SCHEMA,
    BlockFileSpec,
    HeadFileSpec,
    ModuleSpec,
    ModuleUseSpec,
    NetworkSpec,
    OpSpec,
    ShortcutSpec,
    StemFileSpec,
    TransitionSpec,
    expression_to_yaml,
)

DIALECT: Final = "https://json-schema.org/draft/2020-12/schema"
KINDS: Final[dict[str, type[BaseModel]]] = {
    "network": NetworkSpec,
    "block": BlockFileSpec,
    "stem": StemFileSpec,
    "shortcut": ShortcutSpec,
    "transition": TransitionSpec,
    "head": HeadFileSpec,
    "module": ModuleSpec,
}
"""Each file kind and the model its files validate against (``blocks/*.yaml`` are blocks, ...)."""
FOLDERS: Final = {
    "block": "blocks",
    "stem": "stems",
    "shortcut": "shortcuts",
    "transition": "transitions",
    "head": "heads",
    "module": "modules",
}
"""The folder of a part kind beside a network file (and among the built-ins)."""

KEY_DESCRIPTIONS: Final = {
    # The network file.
    "name": "The name: a letter, then letters, digits, '_' or '-'; a part's name is its file name.",
    "description": "One line saying what this is; it becomes the generated class's docstring.",
    "input": "The input images (a network key) or, in a node, the value it reads (default: the previous node).",
    "channels": "Input channels (3 for RGB images).",
    "size": "Input height and width: one number for a square, or [height, width].",
    "stem": "The stem: a file in stems/ beside this one or a built-in stem (imagenet, cifar, deep, ...).",
    "stem_parameters": "Values for the stem's parameters, e.g. {width: 64}.",
    "block": "The residual block: a file in blocks/ or a built-in block (basic, bottleneck, ...).",
    "block_parameters": "Values for the block's parameters, e.g. {groups: 32, base_width: 4}.",
    "shortcut": "The shortcut policy: A, B or C (He et al. 2016), plain (none), a shortcut kind, or a mapping "
    "{where_shapes_match: KIND, where_shapes_change: KIND}.",
    "where_shapes_match": "The shortcut kind of a block whose output has its input's shape ('identity', 'none': no "
    "residual add, or a file in shortcuts/).",
    "where_shapes_change": "The shortcut kind of a block that changes the shape (e.g. 'projection', 'zero_pad', or "
    "'none': no residual add, an inverted residual).",
    "stages": "The stages, in order: each repeats one block type 'depth' times at one width.",
    "depth": "How many blocks the stage repeats.",
    "width": "The stage's width, bound as 'width' in the block (a bottleneck's output is width × expansion).",
    "stride": "The stride: a stage's first block (and its shortcut) downsamples by it; a conv or pool window "
    "moves by it.",
    "head": "The head: a file in heads/ or a built-in head (classifier).",
    "transition": "What runs before a stage's blocks, outside them (ConvNeXt's downsample): a file in "
    "transitions/; a stage's 'none' has none.",
    "transition_parameters": "Values for the transition's parameters.",
    "transition_after_parameters": "Values for the parameters of the transition after the blocks.",
    "transitions": "The path of each stage's transition, with {index} (from 0) or {number} (from 1).",
    "blocks": "The name of each block in its stage, with {index} (from 0) or {number} (from 1): b{number}.",
    "init": "The layer scale's initial value (timm's ls_init_value, 1e-6 in ConvNeXt).",
    "head_parameters": "Values for the head's parameters, e.g. {classes: 1000}.",
    # Part files.
    "parameters": "The part's parameters and their defaults; a network's *_parameters override them.",
    "nodes": "The part's graph: node name -> op, in order; each node reads the previous one unless it says.",
    "module": "The attribute name of the shortcut's module in the block (torchvision's 'downsample').",
    "naming": "How stage and block modules are named: torchvision's layer1.0 (the default) or, e.g., timm's "
    "{stages: 'stages.{index}.blocks'}.",
    # Ops.
    "op": "The operation this node applies.",
    "out_channels": "Output channels.",
    "kernel": "Window size (square).",
    "padding": "Zero padding on every side.",
    "padding_mode": "What padding repeats: 'zeros', or 'reflect' (the input mirrored at its edge, not repeating it).",
    "dilation": "Spacing between kernel taps.",
    "groups": "Grouped convolution: input and output channels split into this many groups.",
    "bias": "Whether the layer adds a learned bias.",
    "epsilon": "Added to the variance before the square root.",
    "ceil_mode": "Round the output size up, so a last partial window counts (torch's ceil_mode).",
    "count_include_pad": "Whether an average counts the padded zeros in its window.",
    "out_features": "Output features.",
    "before": "Zero channels added before the input's.",
    "after": "Zero channels added after the input's.",
}
"""What each key means, in every model that has it; a field's own description in the models wins.
Keys mean the same thing wherever they appear, so the glossary is one table, not one per model."""


def file_name(kind: str) -> str:
    return f"{kind}.schema.json"


def op_names() -> list[str]:
    """Every op a node may name, in the order the spec models list them."""
    union, _discriminator = get_args(OpSpec)
    return [get_args(model.model_fields["op"].annotation)[0] for model in get_args(union)]


def json_schema(kind: str) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a ``kind`` file: ``network``, ``block``, ``stem``,
    ``shortcut`` or ``head``."""
    schema = KINDS[kind].model_json_schema(mode="validation", schema_generator=_Generator)
    _describe(schema)
    schema = {"$schema": DIALECT, "title": f"rescompile {kind} file", **schema}
    if kind in ("network", "block", "stem", "head"):
        # A file that extends another states only what differs: only its name is required of it.
        required = schema.pop("required")
        schema["if"] = {"required": ["extends"]}
        schema["then"] = {"required": ["name"]}
        schema["else"] = {"required": required}
    properties = schema.get("properties", {})
    node_maps = [properties[key] for key in ("nodes", "replace") if key in properties]
    node_maps += [
        properties[key]["additionalProperties"] for key in ("insert_after", "insert_before") if key in properties
    ]
    for nodes in node_maps:
        # A node is one of the op models, chosen by ``op``. pydantic states that as a oneOf with a
        # discriminator mapping; the enum beside it gives editors the list of op names to offer and
        # a validator one clear message for an unknown op.
        node = {
            **nodes["additionalProperties"],
            "type": "object",
            "required": ["op"],
            "properties": {"op": {"enum": op_names(), "description": "The operation this node applies."}},
        }
        # A node may instead use a module (the loader writes its nodes in); a
        # node of a part with templates may take its op from a parameter (op: "{act}").
        alternatives = [node, *([CHOSEN_OP_SCHEMA] if kind in OP_CHOOSERS else [])]
        alternatives += [MODULE_USE_SCHEMA] if kind in MODULE_USERS else []
        nodes["additionalProperties"] = {"anyOf": alternatives} if len(alternatives) > 1 else node
    return schema


OP_CHOOSERS: Final = ("block", "module", "stem", "head")
"""The file kinds whose nodes may take their op from a parameter."""
CHOSEN_OP_SCHEMA: Final = {
    "type": "object",
    "required": ["op"],
    "properties": {
        "op": {
            "type": "string",
            "pattern": "^\\{[A-Za-z_][A-Za-z0-9_]*\\}$",
            "description": 'A parameter of this part that lists its choices, each an op: op: "{act}".',
        }
    },
}
"""A node whose op a parameter chooses (``act1: {op: "{act}"}``); its other keys are the chosen op's."""


MODULE_USERS: Final = ("block", "module", "stem", "head", "shortcut", "transition")
"""The file kinds whose nodes may use a module: all."""
MODULE_USE_SCHEMA: Final = {
    key: value for key, value in ModuleUseSpec.model_json_schema().items() if key not in ("title", "description")
}
"""A node that uses a module (``se: {module: squeeze_excite, parameters: {...}}``)."""


def schema_text(kind: str) -> str:
    """The schema as the file ``rescompile schema`` writes: sorted keys, two-space indents, so the
    committed copies diff cleanly."""
    return json.dumps(json_schema(kind), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def modeline(kind: str, relative_folder: str = "") -> str:
    """The comment that points yaml-language-server at the schema, for a file ``relative_folder``
    away from the schemas' folder (``../`` for a part in ``blocks/``)."""
    return f"# yaml-language-server: $schema={relative_folder}schemas/{file_name(kind)}"


class _Generator(GenerateJsonSchema):
    def encode_default(self, dft: Any) -> Any:
        # A default expression appears as the YAML value it stands for: 1, not Expression('1').
        return expression_to_yaml(dft) if isinstance(dft, Expression) else super().encode_default(dft)


def _describe(node: object) -> None:
    """Give every property without its own description the glossary's."""
    if isinstance(node, dict):
        for key, value in node.get("properties", {}).items():
            generic = value.get("description") in (None, EXPRESSION_SCHEMA["description"])
            if generic and key in KEY_DESCRIPTIONS:
                value["description"] = KEY_DESCRIPTIONS[key]
        for value in node.values():
            _describe(value)
    elif isinstance(node, list):
        for value in node:
            _describe(value)
