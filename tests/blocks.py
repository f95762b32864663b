"""Block instances that the tests sweep over."""

from __future__ import annotations

from repq.reparam import ECB, ACBlock, ConvBN, OREPABlock, OREPALargeConv, RepVGGBlock

# The 1x1 bias before a zero-sum Sobel/Laplacian mask cancels out: it has no effect on
# the block's output in the official ECB either, so its true gradient is zero.
DEAD = ("sobel_x.b0", "sobel_y.b0", "laplacian.b0")

GROUPED = {"convbn": ConvBN, "repvgg": RepVGGBlock, "acblock": ACBlock, "orepa": OREPABlock}


def block_cases() -> list[tuple[str, callable]]:
    """``(id, factory)`` for every block type, stride 1 and 2, in == out and in != out,
    groups 1 and 2 where the block supports groups."""
    cases = []
    for name, cls in GROUPED.items():
        for stride in (1, 2):
            for cin, cout in ((8, 8), (4, 8)):
                for groups in (1, 2):
                    cases.append(
                        (
                            f"{name}-s{stride}-{cin}to{cout}-g{groups}",
                            lambda cls=cls, cin=cin, cout=cout, s=stride, g=groups: cls(
                                cin, cout, 3, s, None, g
                            ),
                        )
                    )
    for stride in (1, 2):
        for cin, cout in ((4, 4), (3, 6)):
            cases.append(
                (
                    f"orepa_large-s{stride}-{cin}to{cout}",
                    lambda cin=cin, cout=cout, s=stride: OREPALargeConv(cin, cout, 7, s),
                )
            )
    for cin, cout, idt in ((8, 8, True), (8, 8, False), (1, 8, False), (8, 4, False)):
        cases.append(
            (f"ecb-{cin}to{cout}-idt{int(idt)}", lambda c=cin, o=cout, i=idt: ECB(c, o, 2.0, i))
        )
    return cases


CASES = block_cases()
IDS = [c[0] for c in CASES]
FACTORIES = [c[1] for c in CASES]
