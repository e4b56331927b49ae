"""Every kind of bad spec gives one located line: ``file:LINE:COL: what is wrong (did you mean …?)``.

Each case writes a small network (and, where needed, a part) into a temporary folder, so the
expected line and column can be read off the text below.
"""

import io
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from rescompile.compiler import OP_KINDS, compile_spec
from rescompile.spec import RescompileError
from rescompile.spec.errors import EXCERPT_VARIABLE, Location, render, source_excerpt, wants_excerpt
from rescompile.spec.loader import builtin_directory
from rescompile.spec.models import TEMPLATE_OPS

BUILTIN = builtin_directory()
VALID_OPS = ", ".join(sorted((*OP_KINDS, *TEMPLATE_OPS)))
"""The op names a node may take, from the op table (and the spec's template ops)."""
KNOWN_BLOCKS = ", ".join(sorted(path.stem for path in (builtin_directory() / "blocks").glob("*.yaml")))
"""The built-in blocks, as an unknown block's error lists them."""

BASE = """\
name: bad
input: {channels: 3, size: 32}
stem: cifar
block: basic
shortcut: B
stages:
  - {depth: 1, width: 16}
  - {depth: 1, width: 32, stride: 2}
head: classifier
head_parameters: {classes: 10}
"""


def network(*replacements: tuple[str, str]) -> str:
    text = BASE
    for old, new in replacements:
        assert old in text, old
        text = text.replace(old, new)
    return text


MINE = "name: mine\nout_channels: width\nnodes:\n"
ADD = "  add: {op: add, inputs: [conv1, shortcut]}\n"
CONV_KEYS = (
    "bias, dilation, groups, input, kernel, op, out_channels, padding, standardize_epsilon, standardize_weight, "
    "stride, when"
)
"""A one-node block (its node named conv1) is MINE, the node, then ADD; CONV_KEYS are conv's valid keys."""


def bounded(declaration: str) -> str:
    """A one-conv block whose parameter ``ratio`` is declared so: ``{default: 1, minimum: 1}``."""
    return (
        f"name: mine\nparameters: {{ratio: {declaration}}}\nout_channels: width\nnodes:\n"
        f"  conv1: {{op: conv, out_channels: width * ratio, kernel: 1}}\n{ADD}"
    )


CASES = {
    "lone_surrogate": (
        network(("name: bad", 'name: bad\ndescription: "x \\udc80"')),
        {},
        "net.yaml:2:14: text holds a lone surrogate '\\udc80', which is not a character",
    ),
    "unknown_key": (
        network(("{depth: 1, width: 16}", "{depth: 1, widht: 16}")),
        {},
        "net.yaml:7:16: unknown key 'widht' (did you mean 'width'?); "
        "valid keys here: block, block_parameters, depth, first_block, first_block_parameters, per_block_parameters, "
        "stride, transition, transition_after, transition_parameters, width",
    ),
    "unknown_top_level_key": (
        network(("head: classifier", "heads: classifier")),
        {},
        "net.yaml:9:1: unknown key 'heads' (did you mean 'head'?); valid keys here: batch_norm, block, "
        "block_parameters, description, extends, head, head_parameters, input, name, naming, shortcut, stages, "
        "stem, stem_parameters, transition, transition_after, transition_after_parameters, transition_parameters",
    ),
    "wrong_type": (
        network(("{depth: 1, width: 16}", "{depth: three, width: 16}")),
        {},
        "net.yaml:7:13: stages[0].depth: input should be a valid integer (got 'three')",
    ),
    "unknown_block_near_miss": (
        network(("block: basic", "block: bottlenek")),
        {},
        "net.yaml:4:8: unknown block 'bottlenek' (did you mean 'bottleneck'?); known blocks: " + KNOWN_BLOCKS,
    ),
    "channel_mismatch": (
        network(("shortcut: B", "shortcut: identity")),
        {},
        "net.yaml:8:5: layer2.0: the residual add 'add' needs the branch (32×16×16) and the shortcut (16×32×32) "
        "to have one shape; use a shortcut policy that projects or pads where shapes change (B, A or C), "
        "not the identity",
    ),
    "zero_width": (
        network(("{depth: 1, width: 16}", "{depth: 1, width: 0}")),
        {},
        "net.yaml:7:23: stages[0].width: input should be greater than 0 (got 0)",
    ),
    "negative_size": (
        network(("size: 32", "size: -3")),
        {},
        "net.yaml:2:28: input.size: input should be greater than 0 (got -3)",
    ),
    "zero_depth": (
        network(("{depth: 1, width: 16}", "{depth: 0, width: 16}")),
        {},
        "net.yaml:7:13: stages[0].depth: input should be greater than 0 (got 0)",
    ),
    "stride_shrinks_map_below_one_pixel": (
        network(("stem: cifar", "stem: tiny"), ("size: 32", "size: 4")),
        {"stems/tiny.yaml": "name: tiny\nnodes:\n  conv1: {op: conv, out_channels: 16, kernel: 7, stride: 2}\n"},
        "stems/tiny.yaml:3:10: stem: conv1: conv (kernel 7×7, stride 2) would shrink the 4×4 feature map below 1×1; "
        "use a larger input size or fewer strided stages",
    ),
    "malformed_yaml": (
        network(("  - {depth: 1, width: 16}", "  - {depth: 1, width: 16")),
        {},
        "net.yaml:7:5: this '{' is never closed: add '}' at the end of its value",
    ),
    "empty_file": ("", {}, "net.yaml:1:1: the file is empty; expected a YAML mapping"),
    "comments_only": ("# nothing here\n", {}, "net.yaml:1:1: the file is empty; expected a YAML mapping"),
    "not_a_mapping": ("- 1\n- 2\n", {}, "net.yaml:1:1: expected a YAML mapping at the top level, got list"),
    "python_tag": (
        network(("name: bad", 'name: !!python/object/apply:os.system ["echo pwned"]')),
        {},
        "net.yaml:1:7: YAML tag '!!python/object/apply:os.system' is not allowed; specs use plain YAML values "
        "(mappings, lists, strings, numbers, booleans)",
    ),
    "duplicate_key": (
        network(("stem: cifar\n", "stem: cifar\nstem: imagenet\n")),
        {},
        "net.yaml:4:1: duplicate key 'stem'",
    ),
    "missing_key": (network(("stem: cifar\n", "")), {}, "net.yaml:1:1: missing required key 'stem' in the top level"),
    "unknown_block_parameter": (
        network(("block: basic", "block: bottleneck\nblock_parameters: {strid_at: conv1}")),
        {},
        "net.yaml:5:20: block 'bottleneck' has no parameter 'strid_at' (did you mean 'stride_at'?); "
        "its parameters: expansion, groups, base_width, stride_at, drop_path_rate",
    ),
    "unknown_shortcut": (
        network(("shortcut: B", "shortcut: projecton")),
        {},
        "net.yaml:5:11: unknown shortcut 'projecton' (did you mean 'projection'?); use a policy "
        "('A', 'B', 'C' or 'none') or a shortcut kind ('identity' or a file in shortcuts/, e.g. 'projection', "
        "'zero_pad')",
    ),
    "zero_pad_cannot_remove_channels": (
        network(("shortcut: B", "shortcut: A"), ("width: 32, stride: 2", "width: 8, stride: 2")),
        {},
        "net.yaml:8:5: shortcut 'zero_pad' cannot take layer2.0 from 16 to 8 channels (layer2.0 shortcut: "
        "nodes.pad.after = out_channels - in_channels gives -8; it must be at least 0)",
    ),
    "unknown_op": (
        network(("block: basic", "block: mine")),
        {
            "blocks/mine.yaml": "name: mine\nout_channels: width\nnodes:\n"
            "  conv1: {op: cnv, out_channels: width, kernel: 3}\n"
        },
        f"blocks/mine.yaml:4:15: unknown op 'cnv' (did you mean 'conv'?) in nodes.conv1; valid ops: {VALID_OPS}",
    ),
    # Node attributes: a near miss, torch's and timm's names, and the op's own valid keys.
    "node_key_near_miss": (
        network(("block: basic", "block: mine")),
        {"blocks/mine.yaml": f"{MINE}  conv1: {{op: conv, out_channels: width, kernal: 3}}\n{ADD}"},
        f"blocks/mine.yaml:4:42: unknown key 'kernal' (did you mean 'kernel'?); valid keys for op 'conv': {CONV_KEYS}",
    ),
    "node_key_torch_name": (
        network(("block: basic", "block: mine")),
        {"blocks/mine.yaml": f"{MINE}  conv1: {{op: conv, out_channels: width, kernel_size: 3}}\n{ADD}"},
        "blocks/mine.yaml:4:42: unknown key 'kernel_size' (torch's or timm's name; here it is 'kernel'); "
        f"valid keys for op 'conv': {CONV_KEYS}",
    ),
    "node_key_linear_out_channels": (
        network(("block: basic", "block: mine")),
        {"blocks/mine.yaml": f"{MINE}  conv1: {{op: linear, out_channels: 3}}\n{ADD}"},
        "blocks/mine.yaml:4:23: unknown key 'out_channels' (torch's or timm's name; here it is 'out_features'); "
        "valid keys for op 'linear': bias, input, op, out_features, when",
    ),
    "node_key_input_on_a_mul": (
        network(("block: basic", "block: mine")),
        {"blocks/mine.yaml": f"{MINE}  conv1: {{op: mul, input: x}}\n{ADD}"},
        "blocks/mine.yaml:4:20: unknown key 'input': op 'mul' reads several values, named in 'inputs' "
        "(inputs: [a, b]); valid keys for op 'mul': constant, inputs, op, when",
    ),
    "node_key_inputs_on_a_conv": (
        network(("block: basic", "block: mine")),
        {"blocks/mine.yaml": f"{MINE}  conv1: {{op: conv, inputs: [a], out_channels: 3, kernel: 1}}\n{ADD}"},
        f"blocks/mine.yaml:4:21: unknown key 'inputs': op 'conv' reads one value: 'input'; valid keys for op 'conv': "
        f"{CONV_KEYS}",
    ),
    "node_key_in_channels": (
        network(("block: basic", "block: mine")),
        {"blocks/mine.yaml": f"{MINE}  conv1: {{op: conv, out_channels: width, kernel: 3, in_channels: 3}}\n{ADD}"},
        "blocks/mine.yaml:4:53: unknown key 'in_channels': a node's input size is not written, it comes from the "
        f"value the node reads; valid keys for op 'conv': {CONV_KEYS}",
    ),
    "node_key_of_another_op": (
        network(("block: basic", "block: mine")),
        {"blocks/mine.yaml": f"{MINE}  conv1: {{op: conv, out_channels: 3, kernel: 3, padding_mode: reflect}}\n{ADD}"},
        "blocks/mine.yaml:4:49: unknown key 'padding_mode' (op 'blur_pool' takes it, op 'conv' does not; did you "
        f"mean 'padding'?); valid keys for op 'conv': {CONV_KEYS}",
    ),
    "node_key_of_several_other_ops": (
        network(("block: basic", "block: mine")),
        {"blocks/mine.yaml": f"{MINE}  conv1: {{op: relu, bias: true}}\n{ADD}"},
        "blocks/mine.yaml:4:21: unknown key 'bias' (ops 'conv', 'linear' or 'pointwise_linear' take it, op 'relu' "
        "does not); valid keys for op 'relu': input, op, when",
    ),
    "node_key_in_a_repeat": (
        network(("block: basic", "block: mine")),
        {
            "blocks/mine.yaml": f"{MINE}  convs: {{op: repeat, index: i, count: 2, nodes: "
            f"{{'c{{i}}': {{op: conv, out_channels: width, kernel_size: 3}}}}}}\n{ADD}"
        },
        "blocks/mine.yaml:4:91: unknown key 'kernel_size' (torch's or timm's name; here it is 'kernel'); "
        f"valid keys for op 'conv': {CONV_KEYS}",
    ),
    "torch_op_name": (
        network(("block: basic", "block: mine")),
        {"blocks/mine.yaml": f"{MINE}  conv1: {{op: BatchNorm2d}}\n{ADD}"},
        "blocks/mine.yaml:4:15: unknown op 'BatchNorm2d' (torch's or timm's name; here it is 'batch_norm') in "
        f"nodes.conv1; valid ops: {VALID_OPS}",
    ),
    # An error inside a built-in part that a value of the user's caused is located at that value.
    "input_size_too_small_for_a_builtin": (
        "extends: convnext_tiny\nname: small\ninput: {size: 8}\n",
        {},
        "net.yaml:3:15: stages.2.downsample: 1: conv (kernel 2×2, stride 2) would shrink the 1×1 feature map below "
        "1×1; use a larger input size or fewer strided stages (in built-in transition 'convnext_downsample', "
        f"{BUILTIN / 'transitions' / 'convnext_downsample.yaml'}:9:8)",
    ),
    "builtin_block_parameter_that_does_not_divide": (
        "extends: resnet50_gn\nname: gn\nblock_parameters: {norm_groups: 7}\n",
        {},
        "net.yaml:3:33: layer1.0: bn1: group_norm groups=7 must divide the 64 channels (in built-in block "
        f"'gn_bottleneck', {BUILTIN / 'blocks' / 'gn_bottleneck.yaml'}:8:8)",
    ),
    # Bounds a part declares on its parameters, checked at the value the network gives.
    "builtin_ratio_out_of_bounds": (
        "extends: seresnet50\nname: se\nblock_parameters: {se_ratio: -0.25}\n",
        {},
        "net.yaml:3:30: se_ratio = -0.25 is out of bounds for block 'se_bottleneck': it must be greater than 0 "
        "(0 < se_ratio <= 1)",
    ),
    "stage_value_out_of_bounds": (
        network(
            ("block: basic", "block: mine"),
            ("{depth: 1, width: 16}", "{depth: 1, width: 16, block_parameters: {ratio: 2}}"),
        ),
        {"blocks/mine.yaml": bounded("{default: 1, minimum: 1, exclusive_maximum: 2}")},
        "net.yaml:7:53: ratio = 2 is out of bounds for block 'mine': it must be less than 2 (1 <= ratio < 2)",
    ),
    "bounded_parameter_given_text": (
        "extends: seresnet50\nname: se\nblock_parameters: {se_ratio: quarter}\n",
        {},
        "net.yaml:3:30: se_ratio = 'quarter' is out of bounds for block 'se_bottleneck': it must be a number "
        "(0 < se_ratio <= 1)",
    ),
    "value_not_among_the_choices": (
        "extends: mobilenetv2_100\nname: m\nblock_parameters: {act: hardswsh}\n",
        {},
        "net.yaml:3:25: act = 'hardswsh' is out of bounds for block 'timm_inverted_residual': it must be one of "
        "relu, relu6, hardswish, silu (did you mean 'hardswish'?)",
    ),
    "default_not_among_the_choices": (
        network(("block: basic", "block: mine")),
        {"blocks/mine.yaml": bounded("{default: 3, choices: [1, 2]}")},
        "blocks/mine.yaml:2:21: parameters.ratio: the default 3 is out of bounds: it must be one of 1, 2",
    ),
    "default_out_of_bounds": (
        network(("block: basic", "block: mine")),
        {"blocks/mine.yaml": bounded("{default: 0, exclusive_minimum: 0}")},
        "blocks/mine.yaml:2:21: parameters.ratio: the default 0 is out of bounds: it must be greater than 0 "
        "(0 < value)",
    ),
    "bound_that_is_not_a_number": (
        network(("block: basic", "block: mine")),
        {"blocks/mine.yaml": bounded("{default: 1, minimum: low}")},
        "blocks/mine.yaml:2:43: parameters.ratio.minimum: input should be a valid integer (got 'low')",
    ),
    "expression_with_a_call": (
        network(("block: basic", "block: mine")),
        {
            "blocks/mine.yaml": "name: mine\nout_channels: width\nnodes:\n"
            "  conv1: {op: conv, out_channels: \"__import__('os').getcwd()\", kernel: 3}\n"
        },
        "blocks/mine.yaml:4:35: nodes.conv1.out_channels: '__import__('os').getcwd()' calls "
        "'__import__('os').getcwd', which is not a function here; the functions: abs(x), int(x), log2(x), "
        "make_divisible(v, divisor=8, min_value=None, round_limit=0.9), max(a, b, ...), min(a, b, ...), "
        "round(number, ndigits=None)",
    ),
    "expression_with_unknown_name": (
        network(("block: basic", "block: mine")),
        {
            "blocks/mine.yaml": "name: mine\nout_channels: width\nnodes:\n"
            "  conv1: {op: conv, out_channels: widht * 2, kernel: 3}\n"
        },
        "blocks/mine.yaml:4:35: 'widht' in conv1.out_channels is not a parameter of block 'mine' "
        "(did you mean 'width'?); known: block_count, block_index, in_channels, stride, width",
    ),
    "node_reads_unknown_value": (
        network(("block: basic", "block: mine")),
        {
            "blocks/mine.yaml": "name: mine\nout_channels: width\nnodes:\n"
            "  conv1: {op: conv, out_channels: width, kernel: 3}\n  bn: {op: batch_norm, input: conv}\n"
        },
        "blocks/mine.yaml:5:31: node 'bn' reads 'conv', which is not an earlier node (did you mean 'conv1'?); "
        "it can read 'conv1', 'input' or 'shortcut'",
    ),
    "required_parameter_missing": (
        network(("block: basic", "block: mine")),
        {
            "blocks/mine.yaml": "name: mine\nparameters: {ratio: required}\nout_channels: width\nnodes:\n"
            "  conv1: {op: conv, out_channels: width * ratio, kernel: 3}\n"
            "  add: {op: add, inputs: [conv1, shortcut]}\n"
        },
        "net.yaml:4:8: block 'mine' needs parameter 'ratio'; set it in block_parameters",
    ),
    "declared_out_channels_disagree": (
        network(("block: basic", "block: mine")),
        {
            "blocks/mine.yaml": "name: mine\nout_channels: width * 2\nnodes:\n"
            "  conv1: {op: conv, out_channels: width, kernel: 3, stride: stride, padding: 1}\n"
            "  add: {op: add, inputs: [conv1, shortcut]}\n"
        },
        "blocks/mine.yaml:2:15: layer1.0: block 'mine' declares out_channels = width * 2 = 32, "
        "but its branch reaching 'add' produces 16 channels",
    ),
    # Limits, and the values pydantic's lax mode used to convert.
    "boolean_width": (
        network(("{depth: 1, width: 16}", "{depth: 1, width: true}")),
        {},
        "net.yaml:7:23: stages[0].width: input should be a valid integer (got True)",
    ),
    "numeric_string_depth": (
        network(("{depth: 1, width: 16}", "{depth: '1', width: 16}")),
        {},
        "net.yaml:7:13: stages[0].depth: input should be a valid integer (got '1')",
    ),
    "integer_over_the_limit": (
        network(("{depth: 1, width: 16}", "{depth: 1, width: 9223372036854775808}")),
        {},
        "net.yaml:7:23: integer out of range: spec integers lie within ±2**31 (±2,147,483,648)",
    ),
    "integer_of_5000_digits": (
        network(("size: 32", "size: " + "9" * 5000)),
        {},
        "net.yaml:2:28: integer out of range: spec integers lie within ±2**31 (±2,147,483,648)",
    ),
    "size_over_the_limit": (
        network(("size: 32", "size: 100000")),
        {},
        "net.yaml:2:28: input.size: input should be less than or equal to 16384 (got 100000)",
    ),
    "too_many_blocks": (
        network(("{depth: 1, width: 16}", "{depth: 10000, width: 16}")),
        {},
        "net.yaml:7:3: the stages hold 10,001 blocks; a network has at most 10,000",
    ),
    "weights_over_the_limit": (
        network(("width: 32, stride: 2", "width: 2147483647, stride: 2")),
        {},
        "net.yaml:8:5: layer2.0: the network's weights pass 4,294,967,296 values (2**32) here; use smaller widths",
    ),
    "epsilon_infinite": (
        network(("block: basic", "block: mine")),
        {"blocks/mine.yaml": "name: mine\nout_channels: width\nnodes:\n  bn: {op: batch_norm, epsilon: .inf}\n"},
        "blocks/mine.yaml:4:33: nodes.bn.epsilon: input should be a finite number (got inf)",
    ),
    "derived_values_that_square": (
        network(("block: basic", "block: mine")),
        {
            "blocks/mine.yaml": "name: mine\nout_channels: width\nderived:\n  a: width * width\n  b: a * a\n"
            "  c: b * b\n  d: c * c\nnodes:\n  conv1: {op: conv, out_channels: width, kernel: 3, padding: 1}\n"
            "  add: {op: add, inputs: [conv1, shortcut]}\n"
        },
        "blocks/mine.yaml:7:6: derived.d = c * c: a value exceeds 2**40 (1,099,511,627,776) in magnitude, "
        "the limit for spec arithmetic",
    ),
    "expression_too_long": (
        network(("block: basic", "block: mine")),
        {
            "blocks/mine.yaml": "name: mine\nout_channels: width\nnodes:\n"
            f"  conv1: {{op: conv, out_channels: width{' + 0' * 300}, kernel: 3}}\n"
        },
        "blocks/mine.yaml:4:35: nodes.conv1.out_channels: an expression has at most 1,000 characters; "
        f"this one has 1,205 (got 'width{' + 0' * 300}')",
    ),
    "expression_too_deep": (
        network(("block: basic", "block: mine")),
        {
            "blocks/mine.yaml": "name: mine\nout_channels: width\nnodes:\n"
            f"  conv1: {{op: conv, out_channels: '{'-' * 40}width', kernel: 3}}\n"
        },
        f"blocks/mine.yaml:4:35: nodes.conv1.out_channels: '{'-' * 40}width' nests more than 32 operations deep; "
        "that is the limit",
    ),
    "comparing_a_string_with_an_integer": (
        network(("block: basic", "block: mine")),
        {
            "blocks/mine.yaml": "name: mine\nparameters: {mode: wide}\nout_channels: width\nderived:\n"
            "  factor: 2 if mode > 1 else 1\nnodes:\n  conv1: {op: conv, out_channels: width, kernel: 3}\n"
            "  add: {op: add, inputs: [conv1, shortcut]}\n"
        },
        "blocks/mine.yaml:5:11: derived.factor = 2 if mode > 1 else 1: a comparison needs numbers, got 'wide'",
    ),
    "part_name_too_long_for_the_file_system": (
        network(("block: basic", "block: " + "b" * 300)),
        {},
        f"net.yaml:4:8: cannot look up '{'b' * 300}': File name too long",
    ),
    "deep_nesting": (
        network(("head: classifier", "head: " + "[" * 100 + "]" * 100)),
        {},
        "net.yaml:9:70: the document nests deeper than 64 levels; that is the limit",
    ),
    "recursive_alias": (
        network(("head: classifier", "head: &loop [*loop]")),
        {},
        "net.yaml:9:7: the document nests deeper than 64 levels; that is the limit",
    ),
    "billion_laughs_in_a_part": (
        network(("block: basic", "block: mine")),
        {
            "blocks/mine.yaml": "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
            + "".join(f"{b}: &{b} [{', '.join([f'*{a}'] * 10)}]\n" for a, b in zip("abcdefgh", "bcdefghi", strict=True))
        },
        "blocks/mine.yaml:1:35: the document holds more than 100,000 values (counting each use of an alias); "
        "that is the limit",
    ),
    "control_character": (
        network(("name: bad", "name: bad\x00")),
        {},
        "net.yaml:1:10: malformed YAML: special characters are not allowed: '\\x00'",
    ),
    # Messages: one line whatever the user text, and no pydantic internals.
    "newline_in_user_text": (
        network(("block: basic", 'block: "bas\\nic\\e[31m"')),
        {},
        "net.yaml:4:8: unknown block 'bas\\nic\\x1b[31m' (did you mean 'basic'?); known blocks: " + KNOWN_BLOCKS,
    ),
    "size_list_too_long": (
        network(("size: 32", "size: [32, 32, 32]")),
        {},
        "net.yaml:2:28: input.size: tuple should have at most 2 items after validation, not 3",
    ),
    "size_list_with_a_boolean": (
        network(("size: 32", "size: [32, true]")),
        {},
        "net.yaml:2:33: input.size[1]: input should be a valid integer (got True)",
    ),
    "policy_missing_a_key": (
        network(("shortcut: B", "shortcut: {where_shapes_match: identity}")),
        {},
        "net.yaml:5:11: missing required key 'where_shapes_change' in shortcut",
    ),
    "policy_with_a_number": (
        network(("shortcut: B", "shortcut: {where_shapes_match: identity, where_shapes_change: 3}")),
        {},
        "net.yaml:5:63: shortcut.where_shapes_change: input should be a valid string (got 3)",
    ),
    # Found by the fuzzer (tests/fuzz): each was a StopIteration or VerificationError traceback.
    "block_without_a_residual_add": (
        network(("block: basic", "block: mine")),
        {
            "blocks/mine.yaml": "name: mine\nout_channels: width\nnodes:\n"
            "  conv1: {op: conv, out_channels: width, kernel: 3}\n"
        },
        "blocks/mine.yaml:3:1: block 'mine' needs exactly one residual add (an add node reading 'shortcut'); "
        "it has none",
    ),
    "head_without_flat_features": (
        network(("head: classifier", "head: mine"), ("head_parameters: {classes: 10}\n", "")),
        {"heads/mine.yaml": "name: mine\nnodes:\n  avgpool: {op: global_average_pool}\n"},
        "heads/mine.yaml:3:12: head 'mine' must end with flat features (e.g. flatten, then linear); "
        "it ends with shape 32×1×1",
    ),
    "parameter_named_like_a_bound_name": (
        network(("block: basic", "block: mine")),
        {
            "blocks/mine.yaml": "name: mine\nparameters: {width: 3}\nout_channels: width\nnodes:\n"
            "  add: {op: add, inputs: [input, shortcut]}\n"
        },
        "blocks/mine.yaml:2:14: parameter name 'width' is bound by the compiler in every block "
        "(block_count, block_index, in_channels, stride, width); declare another name",
    ),
    "shortcut_module_named_like_a_node": (
        network(),
        {
            "shortcuts/projection.yaml": "name: projection\nmodule: bn1\nnodes:\n"
            "  conv: {op: conv, out_channels: out_channels, kernel: 1, stride: stride}\n"
        },
        "shortcuts/projection.yaml:2:9: shortcut 'projection' is held in module 'bn1', which is also a node of "
        "block 'basic'; rename one of them",
    ),
    "container_class_named_like_a_block_class": (
        network(("block: basic", "block: mine")),
        {
            "blocks/mine.yaml": "name: mine\nout_channels: width\nclasses: {g: MineBlock}\nnodes:\n"
            "  g.conv: {op: conv, out_channels: width, kernel: 3, padding: 1}\n"
            "  g.bn: {op: batch_norm}\n"
            "  add: {op: add, inputs: [g.bn, shortcut]}\n"
        },
        "blocks/mine.yaml:3:14: classes.g: a class name is CamelCase ASCII letters and digits, not a name generated "
        "code defines (nor ending in Block, Shortcut or Transition, as the parts' classes do) (got 'MineBlock')",
    ),
    "shortcut_with_a_template": (
        network(),
        {
            "shortcuts/projection.yaml": "name: projection\nmodule: downsample\nnodes:\n"
            "  halves: {op: split, parts: 2}\n"
            "  conv: {op: conv, input: halves.0, out_channels: out_channels, kernel: 1, stride: stride}\n"
        },
        "shortcuts/projection.yaml:3:1: shortcut 'projection' uses a template (repeat, split, when, a placeholder, "
        "a conditional read or a comprehension); templates work in stems, blocks, transitions and heads only",
    ),
    "block_with_two_residual_adds": (
        network(("block: basic", "block: mine")),
        {
            "blocks/mine.yaml": "name: mine\nout_channels: width\nnodes:\n"
            "  conv1: {op: conv, out_channels: width, kernel: 3, padding: 1}\n"
            "  add: {op: add, inputs: [conv1, shortcut]}\n  add2: {op: add, inputs: [add, shortcut]}\n"
        },
        "blocks/mine.yaml:6:3: block 'mine' needs exactly one residual add (an add node reading 'shortcut'); "
        "it has 2 (add, add2)",
    ),
    "float_for_an_integer_attribute": (
        network(("block: basic", "block: mine")),
        {
            "blocks/mine.yaml": "name: mine\nout_channels: width\nnodes:\n"
            "  conv1: {op: conv, out_channels: width / 2, kernel: 3}\n"
            "  conv2: {op: conv, out_channels: width, kernel: 1}\n"
            "  add: {op: add, inputs: [conv2, shortcut]}\n"
        },
        "blocks/mine.yaml:4:35: layer1.0: nodes.conv1.out_channels = width / 2 gives 8.0, a float; it must be an "
        "integer (use //, int() or round())",
    ),
    "infinite_float_parameter": (
        network(("block: basic", "block: basic\nblock_parameters: {drop_path_rate: .inf}")),
        {},
        "net.yaml:5:36: block_parameters.drop_path_rate: input should be a finite number (got inf)",
    ),
    "block_index_set_by_the_network": (
        network(("block: basic", "block: basic\nblock_parameters: {block_index: 3}")),
        {},
        "net.yaml:5:20: 'block_index' is set by the compiler from the stage and input; remove it",
    ),
    "parameter_named_like_a_function": (
        network(("block: basic", "block: mine")),
        {
            "blocks/mine.yaml": "name: mine\nparameters: {make_divisible: 8}\nout_channels: width\nnodes:\n"
            "  add: {op: add, inputs: [input, shortcut]}\n"
        },
        "blocks/mine.yaml:2:14: parameter name 'make_divisible' must be a Python-style identifier (ASCII letters, "
        "digits, underscores), not a keyword, a dunder or one of Any, BatchNorm, BlurPool, ChannelConv, ChannelSlice, "
        "ChannelSoftmax, DropPath, F, LayerNorm2d, LayerScale, PadChannels, PointwiseLinear, ResNet, StdConv2d, "
        "Subsample, abs, blur_pool, channel_slice, channel_softmax, conv_init, fold_batch_norms_on_load, int, jax, "
        "jnp, linear_init, log2, "
        "make_divisible, math, max, min, nn, nnx, out, pad, pad_channels, partial, rngs, round, self, shortcut, "
        "spatial_softmax, standardized_conv, subsample, super, torch, weighted_spatial_sum, x",
    ),
    "unknown_function": (
        network(("block: basic", "block: mine")),
        {
            "blocks/mine.yaml": "name: mine\nderived: {half: floor(width / 2)}\nout_channels: width\nnodes:\n"
            "  add: {op: add, inputs: [input, shortcut]}\n"
        },
        "blocks/mine.yaml:2:17: derived.half: 'floor(width / 2)' calls 'floor', which is not a function here; the "
        "functions: abs(x), int(x), log2(x), make_divisible(v, divisor=8, min_value=None, round_limit=0.9), "
        "max(a, b, ...), min(a, b, ...), round(number, ndigits=None)",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_spec_gives_one_located_line(case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text, parts, expected = CASES[case]
    (tmp_path / "net.yaml").write_text(text)
    for name, part in parts.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(part)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RescompileError) as raised:
        compile_spec("net.yaml")
    assert str(raised.value) == expected
    assert "\n" not in str(raised.value)


def test_missing_file_is_a_located_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RescompileError, match=r"^nothere\.yaml:1:1: no such file: nothere\.yaml$"):
        compile_spec("nothere.yaml")


def test_unknown_builtin_name_suggests_the_near_miss() -> None:
    with pytest.raises(RescompileError, match=r"'resnt50' is neither a file nor a built-in .*did you mean 'resnet50'"):
        compile_spec("resnt50")


def test_a_python_tag_is_never_executed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "pwned"
    text = network(("name: bad", f'name: !!python/object/apply:os.system ["touch {marker}"]'))
    (tmp_path / "net.yaml").write_text(text)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RescompileError):
        compile_spec("net.yaml")
    assert not marker.exists()


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (
            os.mkfifo,
            "blocks/mine.yaml:1:1: blocks/mine.yaml is not a regular file; specs are read only from regular files",
        ),
        (
            lambda path: path.symlink_to("/dev/zero"),
            "blocks/mine.yaml:1:1: blocks/mine.yaml is not a regular file; specs are read only from regular files",
        ),
        (
            lambda path: path.write_bytes(b"# " + b"x" * 2**20),
            "blocks/mine.yaml:1:1: blocks/mine.yaml is larger than 1 MiB (1,048,576 bytes), the limit for a spec file",
        ),
        (
            lambda path: path.write_bytes(b"name: mine\ndescription: caf\xe9\n"),
            "blocks/mine.yaml:2:17: blocks/mine.yaml is not UTF-8 text (byte 0xe9)",
        ),
    ],
)
def test_only_small_regular_text_files_are_read(
    make: Callable[[Path], None], expected: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A FIFO would block forever and /dev/zero never ends: both are refused before reading."""
    (tmp_path / "net.yaml").write_text(network(("block: basic", "block: mine")))
    (tmp_path / "blocks").mkdir()
    make(tmp_path / "blocks" / "mine.yaml")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RescompileError) as raised:
        compile_spec("net.yaml")
    assert str(raised.value) == expected


def test_a_file_name_with_a_line_break_stays_on_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "net\n.yaml").write_text("name: [")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RescompileError) as raised:
        compile_spec("net\n.yaml")
    assert str(raised.value) == "net\\n.yaml:1:8: the file ends where a value was expected; is a '[' or '{' left open?"


def test_the_excerpt_shows_the_source_line_with_a_caret_under_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "net.yaml").write_text(network(("{depth: 1, width: 16}", "{depth: 1, widht: 16}")))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RescompileError) as raised:
        compile_spec("net.yaml")
    assert render(raised.value, excerpt=True).splitlines()[1:] == [
        "  |",
        "7 |   - {depth: 1, widht: 16}",
        "  |                ^^^^^",
    ]
    assert render(raised.value, excerpt=False) == str(raised.value)


@pytest.mark.parametrize(
    ("line", "column", "caret"),
    [
        ("  conv1: {op: conv, kernel: 3}", 15, "              ^^^^"),  # a plain value, up to ','
        ("name: 'a b, c'  # why", 7, "      ^^^^^^^^"),  # a quoted one, to its quote
        ("input: {channels: 3}", 8, "       ^"),  # a bracket alone
        ("\tsize: 3", 1, "^"),  # a tab shows as a space, the caret under it
        ("x: 1", 9, "    ^"),  # past the end: after the line
    ],
)
def test_the_caret_spans_the_token_at_the_column(tmp_path: Path, line: str, column: int, caret: str) -> None:
    (tmp_path / "f.yaml").write_text(f"a: 1\n{line}\n")
    shown = source_excerpt(Location(str(tmp_path / "f.yaml"), 2, column))
    assert shown is not None
    assert shown.splitlines() == ["  |", f"2 | {line.replace(chr(9), ' ').rstrip()}", f"  | {caret}"]


def test_a_long_line_is_shown_as_a_window_around_the_column(tmp_path: Path) -> None:
    text = "a: [" + ", ".join(["1"] * 200) + ", x]\n"
    (tmp_path / "f.yaml").write_text(text)
    shown = source_excerpt(Location(str(tmp_path / "f.yaml"), 1, text.index("x") + 1))
    assert shown is not None
    source, caret = shown.splitlines()[1:]
    assert len(source) <= 104 and source[caret.index("^")] == "x"


@pytest.mark.parametrize("make", [lambda path: None, os.mkfifo, lambda path: path.mkdir()])
def test_no_excerpt_where_the_file_cannot_be_read_back(make: Callable[[Path], None], tmp_path: Path) -> None:
    make(tmp_path / "f.yaml")
    error = RescompileError("bad", Location(str(tmp_path / "f.yaml"), 1, 1))
    assert render(error, excerpt=True) == str(error)


@pytest.mark.parametrize(("setting", "expected"), [("1", True), ("0", False), ("", False)])
def test_the_excerpt_is_for_terminals_unless_the_variable_says(
    setting: str, expected: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(EXCERPT_VARIABLE, setting)
    assert wants_excerpt(io.StringIO()) is expected  # a StringIO is not a terminal
