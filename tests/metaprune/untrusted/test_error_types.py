"""Class 2 of issue 9: every failure caused by input leaves as a documented type.

Generated inputs: odd kwargs for allow-listed constructors, deeply nested JSON/YAML,
malformed metanetwork files, decompression-bomb images, arbitrary device strings, and
half-precision checkpoints (which must simply work). Constructors and metanetwork configs
run in a bounded child process (memory rlimit + timeout).
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from metaprune import checkpoint
from metaprune.cli import main
from metaprune.data import DatasetError, get_dataset
from metaprune.documents import parse_json, parse_yaml
from metaprune.errors import InvalidInputError, LimitExceededError
from metaprune.limits import check_spec
from metaprune.models import ArchSpec, SpecError
from metaprune.models.size import SpecSize
from metaprune.pruning import (
    ConfigError,
    FinetuneBudget,
    LatencyOptions,
    PruneConfig,
    PruningOptions,
    Target,
    prune,
)
from metaprune.testing.bounded import run_bounded
from metaprune.testing.untrusted import check_error, files_under, generated, raises, raw_checkpoint

_SETTINGS = generated(30)
_JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(-1e6, 1e6, allow_nan=False),
    st.text(max_size=12),
)
_JSON = st.recursive(
    _JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
_MODELS = [
    "cifar_resnet20", "cifar_vgg11_bn", "torchvision/resnet18", "torchvision/mobilenet_v2",
    "torchvision/vit_b_16", "torchvision/squeezenet1_0", "torchvision/convnext_tiny",
    "torchvision/swin_t", "torchvision/googlenet", "torchvision/efficientnet_b0",
]  # fmt: skip
_KWARGS = [
    "num_classes", "in_channels", "width", "dropout", "width_mult", "groups",
    "width_per_group", "replace_stride_with_dilation", "stochastic_depth_prob", "aux_logits",
    "image_size", "patch_size", "num_layers", "hidden_dim", "layers", "weights",
    "transform_input", "init_weights", "round_nearest", "window_size", "no_such_kwarg",
]  # fmt: skip


def _child_odd_kwargs() -> dict[str, Any]:
    """In the bounded child: any kwargs of allow-listed models size or fail typed."""
    outcomes: dict[str, int] = {}

    @_SETTINGS
    @given(
        st.sampled_from(_MODELS),
        st.dictionaries(st.sampled_from(_KWARGS), _JSON, min_size=1, max_size=3),
    )
    def prop(name: str, kwargs: dict[str, Any]) -> None:
        try:
            spec = ArchSpec(name, kwargs)
            result: Any = check_spec(spec, input_shape=(3, 32, 32))
        except Exception as err:  # noqa: BLE001 (checked right here)
            check_error(err, InvalidInputError)
            result = err
        assert isinstance(result, (SpecSize, InvalidInputError))
        outcomes[type(result).__name__] = outcomes.get(type(result).__name__, 0) + 1

    prop()
    return outcomes


def _child_malformed_metanetworks() -> dict[str, Any]:
    """In the bounded child: malformed metanetwork exports fail typed, before building."""
    import tempfile

    from metanet import MetaNetwork
    from metanet.export import ExportError, export
    from metanet.export import load as load_metanet

    folder = Path(tempfile.mkdtemp())
    good = MetaNetwork(1, 4, edge_types=["CONV:9", "LINEAR:1"])
    export(good, folder / "good")
    document = json.loads((folder / "good.json").read_text())
    seen = []
    configs = st.fixed_dictionaries(
        {},
        optional={
            "num_layers": st.one_of(st.integers(-3, 10**9), _JSON),
            "hidden": st.one_of(st.integers(-3, 10**7), _JSON),
            "edge_types": st.one_of(st.lists(st.text(max_size=10), max_size=3), _JSON),
            "node_ratio": _JSON,
            "bogus": _JSON,
        },
    )

    @_SETTINGS
    @given(st.one_of(_JSON, configs.map(lambda c: {**document, "config": c})), st.booleans())
    def prop(doc: Any, corrupt_weights: bool) -> None:
        (folder / "m.json").write_text(json.dumps(doc))
        weights = (folder / "good.safetensors").read_bytes()
        if corrupt_weights:
            weights = weights[:8] + bytes(reversed(weights[8:40])) + weights[40:]
        (folder / "m.safetensors").write_bytes(weights)
        err = raises(lambda: load_metanet(folder / "m"))
        check_error(err, (ExportError, LimitExceededError, InvalidInputError))
        seen.append(type(err).__name__)

    prop()
    return {"examples": len(seen), "types": sorted(set(seen))}


def _child() -> dict[str, Any]:
    return {"kwargs": _child_odd_kwargs(), "metanet": _child_malformed_metanetworks()}


@pytest.fixture(scope="module")
def bounded() -> dict[str, Any]:
    result = run_bounded(__file__, "_child", memory_bytes=8 * 1024**3, timeout=600)
    assert result["ok"], result.get("error")
    assert result["max_rss_bytes"] < 3 * 1024**3
    return result["value"]


@pytest.mark.slow
def test_constructor_failures_on_odd_kwargs_are_spec_errors(bounded: dict[str, Any]) -> None:
    outcomes = bounded["kwargs"]
    assert sum(outcomes.values()) >= 25
    assert outcomes.get("SpecError", 0) >= 5  # odd kwargs do break constructors


@pytest.mark.slow
def test_malformed_metanetwork_files_fail_typed(bounded: dict[str, Any]) -> None:
    assert bounded["metanet"]["examples"] >= 25


def test_explicit_constructor_failures() -> None:
    cases = [
        ("cifar_resnet20", {"width": 0}),  # ValueError
        ("torchvision/resnet18", {"groups": 0}),  # ZeroDivisionError
        ("torchvision/resnet18", {"num_classes": -1}),  # torch RuntimeError
        ("torchvision/vit_b_16", {"image_size": 15}),  # AssertionError (not a multiple of 16)
        ("torchvision/resnet18", {"layers": [1, 1, 1, 1]}),  # TypeError (duplicate argument)
    ]
    for name, kwargs in cases:
        err = raises(lambda: ArchSpec(name, kwargs).build())  # noqa: B023
        message = check_error(err, SpecError, f"spec {name!r}: cannot build it")
        assert "\n" not in message


_DEPTHS = st.integers(33, 100_000)


@_SETTINGS
@given(_DEPTHS, st.sampled_from(["list", "object", "yaml-flow", "yaml-block"]))
def test_deeply_nested_documents_are_refused(tmp_path_factory, depth: int, kind: str) -> None:
    if kind == "list":
        text = "[" * depth + "]" * depth
    elif kind == "object":
        text = '{"a":' * depth + "1" + "}" * depth
    elif kind == "yaml-flow":
        text = "a: " + "[" * depth + "]" * depth
    else:
        depth = min(depth, 2_000)  # indentation grows quadratically
        text = "".join(f"{'  ' * i}k{i}:\n" for i in range(depth)) + "  " * depth + "v\n"
    if kind != "yaml-block":
        check_error(raises(lambda: parse_json(text)), (LimitExceededError, InvalidInputError))
        err = raises(lambda: ArchSpec.from_json(text))
        check_error(err, (LimitExceededError, SpecError))
    check_error(raises(lambda: parse_yaml(text)), (LimitExceededError, InvalidInputError))
    # programmatic nesting: iterative depth check, no RecursionError
    deep: Any = 1
    for _ in range(depth):
        deep = [deep]
    err = raises(lambda: ArchSpec("cifar_resnet20", {"width": deep}))
    check_error(err, LimitExceededError, "max_json_depth")
    check_error(raises(lambda: PruneConfig.from_dict({"seed": deep})), ConfigError, "seed")
    # through the CLI: one line, exit 2, nothing written
    folder = tmp_path_factory.mktemp("deep")
    (folder / "config.yaml").write_text(text)
    out = folder / "out"
    argv = ["prune", "x.safetensors", "--dataset", "digits", "-o", str(out)]
    assert main([*argv, "--config", str(folder / "config.yaml")]) == 2
    assert files_under(folder) == ["config.yaml"]


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims ``width`` x ``height`` (valid CRC), with a tiny body."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    body = zlib.compress(b"\x00" * 16)
    idat = b"IDAT" + body
    return (
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))
        + struct.pack(">I", len(body)) + idat + struct.pack(">I", zlib.crc32(idat))
        + struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))
    )  # fmt: skip


@generated(25)
@given(
    st.one_of(
        st.tuples(st.integers(8193, 2**31 - 1), st.integers(8193, 2**31 - 1)).map(
            lambda wh: _png_header(*wh)
        ),
        st.binary(min_size=0, max_size=64),
    )
)
def test_decompression_bombs_and_junk_images_are_dataset_errors(tmp_path_factory, data) -> None:
    root = tmp_path_factory.mktemp("images")
    for split in ("train", "val"):
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True)
            for i in range(2):
                (root / split / cls / f"{i}.png").write_bytes(data)
    splits = get_dataset("imagefolder", root, image_size=16, val_fraction=0.5)
    err = raises(lambda: splits.train[0])
    check_error(err, DatasetError, "dataset 'imagefolder'", ".png")
    assert str(root) not in str(err)  # the file's name, not the host's layout


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory) -> Path:
    spec = ArchSpec("cifar_resnet20", {"width": 0.25, "in_channels": 1})
    return checkpoint.save(spec.build(), spec, tmp_path_factory.mktemp("dev") / "m.safetensors")


@_SETTINGS
@given(
    device=st.one_of(
        st.text(max_size=30), st.sampled_from(["meta", "cuda", "cuda:7", "xla", "cpu:0"])
    )
)
def test_device_strings(small_checkpoint: Path, device: str) -> None:
    try:
        config = PruneConfig(device=device)
    except ConfigError as err:
        check_error(err, ConfigError, "device")
    else:
        assert torch.device(config.device).type in ("cpu", "cuda", "mps")
    try:
        model, _ = checkpoint.load(small_checkpoint, device)
    except checkpoint.CheckpointError as err:
        check_error(err, checkpoint.CheckpointError, "device")
    else:
        assert device != "meta" and next(model.parameters()).device.type == "cpu"


def test_half_precision_checkpoints_work_in_info_eval_and_prune(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    spec = ArchSpec("cifar_resnet20", {"width": 0.25, "in_channels": 1})
    torch.manual_seed(0)
    for dtype in (torch.float16, torch.bfloat16):
        path = checkpoint.save(spec.build().to(dtype), spec, tmp_path / f"{dtype}.safetensors")
        assert main(["info", str(path), "--json"]) == 0
        info = json.loads(capsys.readouterr().out)
        assert info["params"] > 0 and info["macs"] > 0 and "nodes" in info["graph"]
        assert main(["eval", str(path), "--dataset", "digits", "--json"]) == 0
        assert 0.0 <= json.loads(capsys.readouterr().out)["test_accuracy"] <= 1.0
    config = PruneConfig(
        target=Target("macs", 1.3),
        before_pruning=FinetuneBudget(epochs=0),
        after_pruning=FinetuneBudget(epochs=0),
        pruning=PruningOptions(steps=4, curve_points=1),
        bn_recalibration_images=32,
        latency=LatencyOptions(batch_size=2, repeats=1, warmup=0),
    )
    result = prune(path, "digits", config)
    assert result.report["target_reached"] is True and result.report["outputs_finite"] is True
    assert {p.dtype for p in result.model.parameters()} == {torch.float32}


def test_encoding_errors_become_input_errors() -> None:
    from graph_encoding import EncodingError
    from metaprune.pruning.pipeline import _encoding_errors_as_input_errors

    def fail() -> None:
        with _encoding_errors_as_input_errors():
            raise EncodingError("unsupported op 'aten::foo' at module 'x'")

    check_error(raises(fail), InvalidInputError, "cannot encode this model", "aten::foo")


def test_spec_metadata_of_any_shape_is_a_checkpoint_error(tmp_path: Path) -> None:
    @_SETTINGS
    @given(_JSON)
    def prop(spec_json: Any) -> None:
        path = raw_checkpoint(tmp_path / "junk.safetensors", spec_json)
        err = raises(lambda: checkpoint.load(path))
        check_error(err, checkpoint.CheckpointError, str(path))

    prop()


_BIG_JSON = st.recursive(
    st.one_of(_JSON_SCALARS, st.integers(-(10**400), 10**400)),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
_CONFIG_KEYS = st.sampled_from(
    ["method", "target", "metanet", "pruning", "before_pruning", "after_pruning", "latency",
     "batch_size", "seed", "device", "version", "max_wall_seconds", "importance", "sparse"]
)  # fmt: skip


@_SETTINGS
@given(
    st.dictionaries(
        _CONFIG_KEYS,
        st.one_of(
            _BIG_JSON,
            st.dictionaries(
                st.sampled_from(["kind", "value", "epochs", "lr", "steps", "milestones", "p"]),
                _BIG_JSON,
                max_size=3,
            ),
        ),
        max_size=4,
    )
)
def test_config_dicts_of_any_shape_are_config_errors(data: dict[str, Any]) -> None:
    try:
        config = PruneConfig.from_dict(data)
    except ConfigError as err:
        check_error(err, ConfigError)
        return
    try:
        config.check_limits()
    except LimitExceededError as err:
        check_error(err, LimitExceededError, "PruneConfig.")
