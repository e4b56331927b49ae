"""Shape rules of the op table against hand-worked sizes (torch's formulas, stated in the op docs)."""

import dataclasses

import pytest

from rescompile.compiler import compile_spec
from rescompile.compiler.ir import AvgPool, Conv, MaxPool, Pad, PadChannels, Subsample
from rescompile.compiler.ops import OP_TYPES, Elementwise, Mul, ShapeError, Sigmoid

SQUARE_PAD_1 = ((1, 1), (1, 1))


def conv(kernel: int, stride: int, padding: int, channels: int = 4, groups: int = 1) -> Conv:
    pads = ((padding, padding), (padding, padding))
    return Conv(channels, 8, (kernel, kernel), (stride, stride), pads, (1, 1), groups, False)


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "padding", "expected"),
    [
        (224, 7, 2, 3, 112),  # the ImageNet stem: floor((224 + 6 - 7) / 2) + 1
        (7, 3, 2, 1, 4),  # odd size: floor((7 + 2 - 3) / 2) + 1
        (5, 1, 2, 0, 3),  # projection shortcut on an odd map
        (3, 3, 1, 0, 1),
    ],
)
def test_conv_output_size(size: int, kernel: int, stride: int, padding: int, expected: int) -> None:
    assert conv(kernel, stride, padding).output_shape(((4, size, size),)) == (8, expected, expected)


def test_max_pool_ceil_mode_keeps_a_partial_window_unless_it_starts_in_the_padding() -> None:
    floor_mode = MaxPool((3, 3), (2, 2), SQUARE_PAD_1, ceil_mode=False)
    ceil_mode = dataclasses.replace(floor_mode, ceil_mode=True)
    # size 6: span 6 + 2 - 3 = 5; floor(5 / 2) + 1 = 3, ceil(5 / 2) + 1 = 4 (the 4th window starts at 6 < 6 + 1).
    assert floor_mode.output_shape(((2, 6, 6),)) == (2, 3, 3)
    assert ceil_mode.output_shape(((2, 6, 6),)) == (2, 4, 4)
    # kernel 2, stride 2, pad 1 on 5: span 5 + 2 - 2 = 5, ceil gives 4, but the 4th window would start
    # at 6 >= 5 + 1, entirely in the right padding, so it is dropped: 3.
    half = MaxPool((2, 2), (2, 2), SQUARE_PAD_1, ceil_mode=True)
    assert half.output_shape(((2, 5, 5),)) == (2, 3, 3)


def test_avg_pool_and_subsample_sizes() -> None:
    pool = AvgPool((2, 2), (2, 2), ((0, 0), (0, 0)), ceil_mode=False, count_include_pad=True)
    assert pool.output_shape(((3, 5, 5),)) == (3, 2, 2)
    assert Subsample(2).output_shape(((3, 5, 5),)) == (3, 3, 3)  # x[:, :, ::2, ::2] keeps rows 0, 2, 4


def test_pad_channels_adds_channels_only() -> None:
    assert PadChannels(1, 3).output_shape(((4, 5, 6),)) == (8, 5, 6)


def test_pad_adds_rows_and_columns_on_every_side() -> None:
    assert Pad(1).output_shape(((4, 5, 6),)) == (4, 7, 8)
    assert Pad(0).output_shape(((4, 5, 6),)) == (4, 5, 6)


def test_conv_rejects_groups_that_do_not_divide_channels() -> None:
    with pytest.raises(ShapeError, match="groups=3 must divide"):
        conv(3, 1, 1, channels=4, groups=3).output_shape(((4, 8, 8),))


def test_conv_rejects_a_map_that_would_vanish() -> None:
    with pytest.raises(ShapeError, match="below 1×1"):
        conv(3, 1, 0).output_shape(((4, 2, 2),))


def test_odd_input_sizes_flow_through_resnet50() -> None:
    graph = compile_spec("resnet50", size=(33, 17))
    assert graph.blocks[0].in_shape == (64, 9, 5)  # 33 -> 17 -> 9, 17 -> 9 -> 5
    assert graph.blocks[-1].out_shape == (2048, 2, 1)
    assert graph.output_shape == (1000,)


def test_mul_broadcasts_a_channel_gate_and_refuses_what_numpy_would() -> None:
    assert Mul().output_shape(((8, 5, 6), (8, 1, 1))) == (8, 5, 6)
    assert Mul().output_shape(((8, 1, 1), (8, 5, 6))) == (8, 5, 6)
    assert Mul().output_shape(((8,), (8,))) == (8,)
    with pytest.raises(ShapeError, match="cannot broadcast 8×5×6 and 4×1×1"):
        Mul().output_shape(((8, 5, 6), (4, 1, 1)))
    with pytest.raises(ShapeError, match="one rank"):
        Mul().output_shape(((8, 5, 6), (8,)))


def test_sigmoid_keeps_its_input_shape() -> None:
    assert Sigmoid().output_shape(((8, 5, 6),)) == (8, 5, 6)


@pytest.mark.parametrize(
    "op_type", [op_type for op_type in OP_TYPES if issubclass(op_type, Elementwise)], ids=lambda op_type: op_type.kind
)
def test_an_elementwise_op_keeps_its_input_shape_and_takes_one_input(op_type: type[Elementwise]) -> None:
    op = op_type()
    assert op.output_shape(((16, 7, 5),)) == (16, 7, 5)
    assert op.output_shape(((10,),)) == (10,)
    with pytest.raises(ShapeError, match="takes one input, got 2"):
        op.output_shape(((16, 7, 5), (16, 7, 5)))
