"""The TF-2015 Inception V3 mapped onto torchvision's Inception3 layers reproduces the
TorchScript network it comes from, on real scenes; our Inception3 layers are torchvision's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import UCMERCED
from PIL import Image
from torch import nn
from torchvision.models import inception as tv_inception

from dahash_index.model.backbones import (
    BackboneError,
    fid_helper_weights_path,
    image_to_tensor,
    load_backbone,
    load_tf2015_state_dict,
    tf2015_inception_v3,
)
from dahash_index.model.inception import (
    BasicConv2d,
    InceptionV3Features,
    tf2015_inception_v3_features,
    torchvision_inception_v3_features,
)


@pytest.fixture(scope="module")
def backbone():
    return tf2015_inception_v3()


def test_weight_mapping_covers_all_94_convolutions():
    state = load_tf2015_state_dict(fid_helper_weights_path())
    convs = {k.rsplit(".conv.weight", 1)[0] for k in state if k.endswith(".conv.weight")}
    assert len(convs) == 94
    # TF's batch norm has no scale: every gamma is exactly 1.
    assert all(torch.all(v == 1) for k, v in state.items() if k.endswith(".bn.weight"))


def test_backbone_is_a_frozen_inception3(backbone):
    assert isinstance(backbone.net, InceptionV3Features)
    assert sum(isinstance(m, BasicConv2d) for m in backbone.net.modules()) == 94
    assert all(m.bn.eps == 1e-3 for m in backbone.net.modules() if isinstance(m, BasicConv2d))
    assert not any(p.requires_grad for p in backbone.parameters())
    backbone.train()
    assert not backbone.net.training  # frozen means frozen, even after .train()
    assert backbone.spec.name == "tf2015" and len(backbone.spec.weights_sha256) == 64


@pytest.mark.realdata
def test_mapped_module_reproduces_the_torchscript_features(backbone):
    script = torch.jit.load(str(fid_helper_weights_path()), map_location="cpu").eval()
    names = ["airplane/airplane00.jpg", "beach/beach10.jpg", "forest/forest20.jpg",
             "harbor/harbor30.jpg"]
    images = [np.asarray(Image.open(UCMERCED / n).convert("RGB")) for n in names]
    x = torch.stack([image_to_tensor(i) for i in images])  # (4, 3, 299, 299) in [0, 255]
    ours = backbone(x)
    with torch.no_grad():
        reference = script(x / 127.5 - 1.0)  # the TorchScript file wants [-1, 1]
    assert ours.shape == (4, 2048)
    # Measured 3.5e-6 on this machine (features reach ~4.3): float rounding only.
    assert (ours - reference).abs().max().item() < 1e-4


def test_any_size_is_resized_to_299():
    x = image_to_tensor(np.zeros((256, 250, 3), dtype=np.uint8))
    assert x.shape == (3, 299, 299) and x.dtype == torch.float32


def test_bad_image_array_refused():
    with pytest.raises(ValueError, match=r"expected \(H, W, 3\) uint8"):
        image_to_tensor(np.zeros((8, 8), dtype=np.uint8))


def test_unknown_backbone_and_missing_torchvision_weights(tmp_path):
    with pytest.raises(BackboneError, match="backbone must be one of tf2015, torchvision, random"):
        load_backbone("resnet")
    with pytest.raises(BackboneError, match="not found locally"):
        load_backbone("torchvision", str(tmp_path / "missing.pth"))


@pytest.mark.parametrize("variant", ["torchvision", "tf2015"])
def test_our_layers_are_torchvisions(variant):
    """Same parameter names, shapes and order as torchvision's Inception3 (less aux and fc);
    with one random state dict, torchvision's variant gives torchvision's features. (The
    TF-2015 variant's pools are checked against the TorchScript network itself, above.)"""
    torch.manual_seed(0)
    theirs = tv_inception.Inception3(num_classes=10, aux_logits=False, init_weights=True)
    theirs.fc = nn.Identity()
    state = {k: v for k, v in theirs.state_dict().items() if not k.startswith("fc.")}
    ours = (torchvision_inception_v3_features if variant == "torchvision"
            else tf2015_inception_v3_features)()
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == [
        (k, v.shape) for k, v in state.items()]
    if variant == "torchvision":
        ours.load_state_dict(state)
        theirs.eval(), ours.eval()
        x = torch.randn(2, 3, 299, 299)
        with torch.no_grad():
            assert torch.allclose(ours(x), theirs(x), atol=1e-5)




def test_mapped_weights_are_cached_by_path_size_and_mtime(tmp_path, monkeypatch):
    import os
    import shutil

    monkeypatch.setenv("DAHASH_INDEX_BACKBONE_CACHE", str(tmp_path / "cache"))
    weights = tmp_path / "default_1.pt"
    shutil.copy(fid_helper_weights_path(), weights)
    first = tf2015_inception_v3(weights)
    (cached,) = (tmp_path / "cache").glob("tf2015-*.pt")
    second = tf2015_inception_v3(weights)  # from the cache
    assert second.spec == first.spec
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items(),
                                 strict=True):
        assert torch.equal(a, b), name
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 1))  # "changed": mapped again
    assert tf2015_inception_v3(weights).spec == first.spec
    assert len(list((tmp_path / "cache").glob("tf2015-*.pt"))) == 2
    cached.write_bytes(b"not a torch file")  # a damaged cache is only slower
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert tf2015_inception_v3(weights).spec == first.spec


def test_random_backbone_is_seeded_and_named_for_what_it_is():
    from dahash_index.model.backbones import BACKBONES

    assert "random" in BACKBONES
    a, b = load_backbone("random"), load_backbone("random")
    assert a.spec.name == "random" and a.spec.weights_sha256 == b.spec.weights_sha256
    x = torch.rand(1, 3, 299, 299) * 255
    assert torch.equal(a(x), b(x)) and a(x).shape == (1, 2048)
