"""One small timm model per family (timm module), encoded and decoded as a new user would.

    PYTHONPATH=. .venv/bin/python -m metaprune.testing.timm_sweep [family ... | --extra]

prints a markdown table (family, model, exact / refused, reason, coverage, seconds). The
slow test ``test_timm_sweep.py`` runs the same check. Models are randomly initialised with
non-trivial norm statistics (``randomize_norms``), so a norm decoded into the wrong slot
changes the outputs.
"""

from __future__ import annotations

import copy
import sys
import time
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from graph_encoding import EncodingError, decode, encode
from metaprune.testing import randomize_norms

__all__ = ["FAMILIES", "EXTRA", "Outcome", "check", "main"]

# family (timm module) -> (model, create kwargs, input side). Small variants; transformers
# get a small image size so a sweep stays within a couple of minutes on 2 cores.
FAMILIES: dict[str, tuple[str, dict, int]] = {
    "resnet": ("resnet18", {}, 64),
    "resnet (eca)": ("ecaresnet26t", {}, 64),
    "resnetv2": ("resnetv2_18", {}, 64),
    "efficientnet": ("efficientnet_b0", {}, 64),
    "efficientnet (mixnet)": ("mixnet_s", {}, 64),
    "efficientnet (tinynet)": ("tinynet_e", {}, 64),
    "mobilenetv3": ("mobilenetv3_small_050", {}, 64),
    "mobilenetv3 (lcnet)": ("lcnet_050", {}, 64),
    "rexnet": ("rexnet_100", {}, 64),
    "regnet": ("regnetx_002", {}, 64),
    "dpn": ("dpn48b", {}, 64),
    "cspnet": ("cs3darknet_focus_s", {}, 64),
    "densenet": ("densenet121", {}, 64),
    "byobnet (repvgg)": ("repvgg_a0", {}, 64),
    "res2net": ("res2net50_14w_8s", {}, 64),
    "ghostnet": ("ghostnet_050", {}, 64),
    "edgenext": ("edgenext_xx_small", {}, 64),
    "vision_transformer": ("vit_tiny_patch16_224", {"img_size": 64}, 64),
    "deit": ("deit_tiny_patch16_224", {"img_size": 64}, 64),
    "levit": ("levit_128s", {"img_size": 64}, 64),
    "convnext": ("convnext_atto", {}, 64),
    "convnext (v2, GRN)": ("convnextv2_atto", {}, 64),
    "mlp_mixer (resmlp)": ("resmlp_12_224", {"img_size": 64}, 64),
    "mlp_mixer (mixer)": ("mixer_s32_224", {"img_size": 64}, 64),
    "hrnet": ("hrnet_w18_small", {}, 64),
    "swin_transformer": ("swin_tiny_patch4_window7_224", {"img_size": 112}, 112),
    "maxxvit": ("maxvit_nano_rw_256", {"img_size": 128}, 128),
    "vgg": ("vgg11_bn", {"mlp_ratio": 0.125}, 64),  # a 512-wide head: the 4096 one is 100 M
    "dla": ("dla34", {}, 64),
    "vovnet": ("ese_vovnet19b_slim", {}, 64),
    "selecsls": ("selecsls42b", {}, 64),
    "hardcorenas": ("hardcorenas_a", {}, 64),
    "sknet": ("skresnet18", {}, 64),
    "resnest": ("resnest14d", {}, 64),
    "nfnet": ("nf_resnet26", {}, 64),
    "inception_v3": ("inception_v3", {}, 96),
    "xception_aligned": ("xception41", {}, 64),
    "mobilevit": ("mobilevit_xxs", {}, 64),
    "metaformer": ("poolformer_s12", {}, 64),
    "repvit": ("repvit_m0_9", {}, 64),
    "fastvit": ("fastvit_t8", {}, 64),
    "hgnet": ("hgnetv2_b0", {}, 64),
    "starnet": ("starnet_s050", {}, 64),
    "cait": ("cait_xxs24_224", {"img_size": 64}, 64),
    "pit": ("pit_ti_224", {"img_size": 64}, 64),
    "tresnet": ("tresnet_m", {}, 64),
}

# tried beyond the sweep (README: 21 of 41 exact, the rest refused by name; not a test)
EXTRA: dict[str, tuple[str, dict, int]] = {
    "ghostnetv2": ("ghostnetv2_100", {}, 64),
    "repghost": ("repghostnet_050", {}, 64),
    "efficientformer": ("efficientformer_l1", {}, 224),
    "efficientformer_v2": ("efficientformerv2_s0", {}, 224),
    "efficientvit_mit": ("efficientvit_b0", {}, 64),
    "efficientvit_msra": ("efficientvit_m0", {}, 224),
    "fasternet": ("fasternet_t0", {}, 64),
    "focalnet": ("focalnet_tiny_srf", {}, 224),
    "gcvit": ("gcvit_xxtiny", {}, 224),
    "inception_next": ("inception_next_atto", {}, 64),
    "mambaout": ("mambaout_femto", {}, 64),
    "coat": ("coat_lite_mini", {}, 224),
    "convit": ("convit_tiny", {}, 224),
    "crossvit": ("crossvit_tiny_240", {}, 240),
    "nest": ("nest_tiny", {}, 224),
    "pvt_v2": ("pvt_v2_b0", {}, 64),
    "rdnet": ("rdnet_tiny", {}, 64),
    "shvit": ("shvit_s1", {}, 224),
    "swiftformer": ("swiftformer_xs", {}, 224),
    "tiny_vit": ("tiny_vit_5m_224", {}, 224),
    "twins": ("twins_pcpvt_small", {}, 224),
    "visformer": ("visformer_tiny", {}, 224),
    "volo": ("volo_d1_224", {}, 224),
    "xcit": ("xcit_nano_12_p16_224", {}, 224),
    "davit": ("davit_tiny", {}, 224),
    "hiera": ("hiera_tiny_224", {}, 224),
    "sequencer": ("sequencer2d_s", {}, 224),
    "tnt": ("tnt_s_patch16_224", {}, 224),
    "byobnet (gernet)": ("gernet_s", {}, 64),
    "byoanet": ("botnet26t_256", {"img_size": 64}, 64),
    "eva": ("eva02_tiny_patch14_224", {}, 224),
    "vision_transformer_relpos": ("vit_relpos_small_patch16_224", {}, 224),
    "cspnext": ("cspnext_tiny", {}, 64),
    "convmixer": ("convmixer_768_32", {}, 64),
    "dla": ("dla34", {}, 64),
    "mvitv2": ("mvitv2_tiny", {}, 224),
    "lcnetv2": ("lcnetv2_small", {}, 64),
    "starnet": ("starnet_s1", {}, 64),
    "senet": ("legacy_seresnet18", {}, 64),
    "inception_v4": ("inception_v4", {}, 96),
    "nasnet": ("nasnetalarge", {}, 96),
}


@dataclass
class Outcome:
    family: str
    model: str
    exact: bool
    reason: str
    coverage: float
    seconds: float


def check(family: str) -> Outcome:
    """Encode, decode and reload one family's model; exact means bit-equal state and outputs."""
    import timm

    name, kwargs, side = FAMILIES.get(family) or EXTRA[family]
    torch.manual_seed(0)
    t = time.perf_counter()
    model = randomize_norms(timm.create_model(name, pretrained=False, num_classes=10, **kwargs))
    model.eval()
    x = torch.randn(2, 3, side, side)
    try:
        graph = encode(model, x)
    except EncodingError as exc:
        return Outcome(family, name, False, str(exc), 0.0, time.perf_counter() - t)
    except Exception as exc:  # a crash is a bug of the encoder: reported, never hidden
        return Outcome(family, name, False, f"CRASH {exc!r}", -1.0, time.perf_counter() - t)
    state = decode(graph, model)
    reference = model.state_dict()
    bad = [k for k, v in reference.items() if not torch.equal(state[k], v)]
    rebuilt = copy.deepcopy(model)
    with torch.no_grad():
        for p in rebuilt.parameters():
            nn.init.zeros_(p)
    rebuilt.load_state_dict(state)
    with torch.no_grad():
        same = torch.equal(rebuilt(x), model(x))
    exact = not bad and same
    reason = "" if exact else f"inexact: {bad[:3]} outputs equal={same}"
    return Outcome(family, name, exact, reason, graph.coverage, time.perf_counter() - t)


def main(families: list[str]) -> None:
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    if families == ["--extra"]:
        families = list(EXTRA)
    rows = [check(f) for f in families or list(FAMILIES)]
    print("| family | model | result | reason | coverage | s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        result = (
            "exact"
            if r.exact
            else "CRASH"
            if r.coverage < 0
            else "refused"
            if not r.coverage
            else "INEXACT"
        )
        print(
            f"| {r.family} | {r.model} | {result} | {r.reason[:160]} | "
            f"{r.coverage:.4f} | {r.seconds:.1f} |"
        )
    exact = sum(r.exact for r in rows)
    print(f"\n{exact} / {len(rows)} families exact")


if __name__ == "__main__":
    main(sys.argv[1:])
