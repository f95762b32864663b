"""The experiment's vocabulary, defined once: bit widths, QAT methods, stages, tasks and
architectures. Torch-free, so that the workflow, the command line, the engine and the
report all read it without paying for torch.

A *stage* is one training job of an experiment: ``fp`` (the float model), an FP stage
of a method that trains its own float model (``fp-bnest``: RepQ-BNest replaces BN by BN
estimation in both stages, S1), ``ptq-<bits>`` (the merged FP model quantized and
calibrated, not trained: the paper's first baseline) or ``qat-<method>-<bits>``. Its
one spelling is ``str(stage)``; :meth:`Stage.parse` reads it back and
:attr:`Stage.display` is what a table shows (``4-bit RepQ``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from repq.errors import ConfigError

BITS: tuple[int, ...] = (8, 4)
"""The QAT bit widths of the paper (Table S1 has a steps' LR for each)."""

FP_BITS = 32
FP = "fp"
PTQ = "ptq"
PTQ_METHOD = "merged"
"""Post-training quantization quantizes the merged model, as the Merged baseline does,
and stops after calibration."""


BASE_VARIANT = "base"
"""The variant of every experiment as configured, without a variant's overrides: the
reference the workflow's named variants (``variants:``, the ablations) are read against.
Every run's folder names its variant (``runs/<experiment>/<variant>/seed<k>/<stage>``)."""

ALL_STAGES, QUANTIZED_STAGES = VARIANT_SCOPES = ("all", "quantized")
"""The stages a variant's overrides apply to: ``all`` (it trains FP models of its own) or
``quantized`` (its PTQ and QAT stages start from the base variant's FP models)."""


@dataclass(frozen=True)
class Method:
    """A QAT method of the paper (its model transformation lives in :mod:`repq.qat`).

    ``fp_variant`` names a float model of the method's own (``"BNest"``: stage
    ``fp-bnest``, shown as ``FP-BNest``), else the method starts from ``fp``;
    ``needs_norm``: the method applies only to architectures with BatchNorm;
    ``lr_keys``: the ``train.lr`` key per bit width where it is not ``quantized``.
    """

    name: str
    display: str
    fp_variant: str | None = None
    needs_norm: bool = False
    lr_keys: tuple[tuple[int, str], ...] = ()

    @property
    def fp_stage(self) -> str:
        """The FP stage whose model this method starts from."""
        return f"{FP}-{self.fp_variant.lower()}" if self.fp_variant else FP

    @property
    def fp_display(self) -> str:
        return f"FP-{self.fp_variant}" if self.fp_variant else "FP"

    def lr_key(self, bits: int) -> str:
        """The ``train.lr`` key of a run of this method at ``bits`` (Table S1)."""
        return dict(self.lr_keys).get(bits, "quantized")

    def applies_to(self, model: str) -> bool:
        """Whether the method applies to a model (one this package does not know: yes)."""
        facts = architecture(model)
        return not self.needs_norm or facts is None or facts.has_norm


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("merged", "Merged", lr_keys=((8, "merged_8bit"),)),
        Method("repq", "RepQ"),
        Method("bnest", "RepQ-BNest", fp_variant="BNest", needs_norm=True),
    )
}
"""The QAT methods, in table order. A new method is one entry here and one handler in
:data:`repq.qat.HANDLERS`."""


def method(name: str) -> Method:
    """The registered method ``name``, or a ConfigError naming the choices."""
    try:
        return METHODS[name]
    except KeyError:
        raise ConfigError(f"unknown QAT method {name!r}; choose one of {list(METHODS)}") from None


def fp_stages() -> list[str]:
    """Every FP stage (``fp`` first, then each method's own, in registry order)."""
    return list(dict.fromkeys([FP, *(m.fp_stage for m in METHODS.values())]))


@dataclass(frozen=True)
class Stage:
    """One stage: an FP stage (``method`` and ``bits`` unset), PTQ (``bits``) or QAT."""

    name: str
    method: str | None = None
    bits: int | None = None

    @classmethod
    def qat(cls, method_name: str, bits: int) -> Stage:
        return cls("qat", method_name, bits)

    @classmethod
    def ptq(cls, bits: int) -> Stage:
        return cls(PTQ, bits=bits)

    @classmethod
    def parse(cls, text: str) -> Stage:
        """The stage spelt ``text`` (``fp``, ``fp-bnest``, ``ptq-8``, ``qat-repq-4``)."""
        if text in fp_stages():
            return cls(text)
        ptq = re.fullmatch(rf"{PTQ}-(\d+)", text)
        if ptq and int(ptq[1]) in BITS:
            return cls.ptq(int(ptq[1]))
        qat = re.fullmatch(r"qat-(\w+)-(\d+)", text)
        if qat and qat[1] in METHODS and int(qat[2]) in BITS:
            return cls.qat(qat[1], int(qat[2]))
        raise ConfigError(f"unknown stage {text!r}; stages are {stage_pattern()}")

    def __str__(self) -> str:
        if self.is_qat:
            return f"qat-{self.method}-{self.bits}"
        return f"{PTQ}-{self.bits}" if self.is_ptq else self.name

    @property
    def is_qat(self) -> bool:
        return self.name == "qat"

    @property
    def is_ptq(self) -> bool:
        return self.name == PTQ

    @property
    def quantized(self) -> bool:
        """Whether the stage's model is quantized (PTQ or QAT)."""
        return self.is_qat or self.is_ptq

    @property
    def trains(self) -> bool:
        """Whether the stage trains (PTQ only calibrates)."""
        return not self.is_ptq

    @property
    def quant_method(self) -> str | None:
        """The method whose model transformation the stage uses (PTQ: the Merged one)."""
        return PTQ_METHOD if self.is_ptq else self.method

    @property
    def method_display(self) -> str:
        """The stage without its bit width: ``FP``, ``FP-BNest``, ``PTQ``, ``RepQ``."""
        if self.is_qat:
            return METHODS[self.method].display
        if self.is_ptq:
            return "PTQ"
        owner = next((m for m in METHODS.values() if m.fp_stage == self.name), None)
        return owner.fp_display if owner else "FP"

    @property
    def display(self) -> str:
        """``FP``, ``FP-BNest``, ``8-bit PTQ``, ``4-bit RepQ``."""
        if self.quantized:
            return f"{self.bits}-bit {self.method_display}"
        return self.method_display

    @property
    def init(self) -> Stage | None:
        """The FP stage a quantized stage starts from (none for an FP stage)."""
        if self.is_qat:
            return Stage(METHODS[self.method].fp_stage)
        return Stage(FP) if self.is_ptq else None

    @property
    def lr_key(self) -> str:
        """The ``train.lr`` key of this stage (Table S1); PTQ does not train."""
        return METHODS[self.method].lr_key(self.bits) if self.is_qat else "fp"

    @property
    def bit_width(self) -> int:
        return self.bits if self.quantized else FP_BITS


def stage_names(quantized_only: bool = False) -> list[str]:
    """Every stage name: the FP stages, then per bit width PTQ and QAT per method."""
    quantized = [str(s) for b in BITS for s in (Stage.ptq(b), *(Stage.qat(m, b) for m in METHODS))]
    return quantized if quantized_only else fp_stages() + quantized


def stage_pattern() -> str:
    """A regular expression matching every stage name (Snakemake's wildcard)."""
    fp = "|".join(re.escape(s) for s in fp_stages())
    methods = "|".join(METHODS)
    bits = "|".join(str(b) for b in BITS)
    return f"{fp}|{PTQ}-({bits})|qat-({methods})-({bits})"


@dataclass(frozen=True)
class Task:
    """A kind of experiment: its metrics (``<metric>`` or ``<metric>/<test set>``), the
    primary metric and how a run's reported checkpoint is selected (S1)."""

    name: str
    display: str
    metrics: tuple[str, ...]
    primary: str
    selection: str

    def primary_keys(self, keys: Iterable[str]) -> list[str]:
        """The primary metric on every test set among result keys (``top1``;
        ``psnr/<set>`` for each set)."""
        return [k for k in keys if k.split("/")[0] == self.primary]

    def primary_key(self, keys: Iterable[str]) -> str:
        """The primary metric on the first test set (``top1``; ``psnr/<first set>``)."""
        return self.primary_keys(keys)[0]


TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task("classification", "Classification", ("top1",), "top1", "best"),
        Task("superres", "Super-resolution", ("psnr", "ssim"), "psnr", "last"),
    )
}


@dataclass(frozen=True)
class Architecture:
    """An architecture of the model zoo: its task, whether it has BN, its table name."""

    name: str
    display: str
    task: str
    has_norm: bool = True


ARCHITECTURES: dict[str, Architecture] = {
    a.name: a
    for a in (
        Architecture("repvgg_a0", "RepVGG-A0", "classification"),
        Architecture("repvgg_b0", "RepVGG-B0", "classification"),
        Architecture("ac_resnet18", "AC-ResNet-18", "classification"),
        Architecture("orepa_resnet18", "OREPA-ResNet-18", "classification"),
        Architecture("resnet18", "ResNet-18", "classification"),
        Architecture("ecbsr", "ECBSR", "superres", has_norm=False),
    )
}


TIMM_PREFIX = "timm/"
"""A model name ``timm/<name>`` is timm's ``<name>`` (classification, with BN), its
re-parametrizable blocks adopted by :mod:`repq.reparam.timm_blocks`."""


def architecture(name: str) -> Architecture | None:
    """The facts of a zoo architecture or of a timm model (``timm/<name>``); None for
    any other name."""
    if name.startswith(TIMM_PREFIX):
        return Architecture(name, name, "classification")
    return ARCHITECTURES.get(name)


def display_name(name: str) -> str:
    """The table name of an architecture (its own name when it is not in the zoo)."""
    known = architecture(name)
    return known.display if known else name


def stages(architecture: str, methods: list[str], bits: list[int], ptq: bool = True) -> list[Stage]:
    """Every stage of an experiment: FP stages first, then per bit width PTQ (if ``ptq``)
    and QAT per method (the methods that apply to the architecture)."""
    chosen = [METHODS[m] for m in methods if METHODS[m].applies_to(architecture)]
    fp = list(dict.fromkeys([FP, *(m.fp_stage for m in chosen)]))
    quantized = [
        s
        for b in bits
        for s in ([Stage.ptq(b)] if ptq else []) + [Stage.qat(m.name, b) for m in chosen]
    ]
    return [Stage(s) for s in fp] + quantized
