"""The ``dahash-index train``, ``adapt`` and ``eval`` commands (registered by ``cli.main``):
learning, fitting to an archive without labels, and the evaluation of METHOD.md."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click

from dahash_index.cli.options import HOME_HELP, LazyChoice, default_model, fail
from dahash_index.model.rerank import DEFAULT_RERANK, RERANKS


def _int_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError as err:
        raise click.BadParameter(f"expected comma-separated integers, got {text!r}") from err


def _backbones() -> tuple[str, ...]:
    from dahash_index.model.backbones import BACKBONES  # imports torch: only when asked for

    return tuple(BACKBONES.names(pretrained=True))


@click.command(short_help="Train the hash network on a labelled dataset.")
@click.option("--data", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Image-folder dataset: DATA/<class>/<scene>; the folder name is the label.")
@click.option("--bits", default=64, show_default=True, type=int,
              help="Code length K (a multiple of 8).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help=f"Checkpoint to write [default: {HOME_HELP}/model.pt].")
@click.option("--seed", default=0, show_default=True, type=int,
              help="Seed of the per-class 60/40 split and of the initialisation.")
@click.option("--preset", "preset_name", default="dahash", show_default=True,
              type=click.Choice(["dahash", "dahash-d4", "milan"]),
              help="Shipped configuration to start from: dahash (the default), dahash-d4 (also "
                   "trains on all 8 flips and rotations and codes every scene as the mean of "
                   "its 8 orientations: 8x the backbone work, at build and query time too), "
                   "milan (the MiLAN baseline).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override one training option, e.g. --set steps=3000 --set attention=single.")
@click.option("--backbone", default="tf2015", show_default=True,
              type=LazyChoice(_backbones), help="Frozen ImageNet Inception V3.")
@click.option("--backbone-weights", type=click.Path(dir_okay=False), default=None,
              help="Weights file for the backbone (default: the packaged / cached file).")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Feature cache "
                   "[default: $DAHASH_INDEX_CACHE or ~/.cache/dahash-index/features].")
def train(data, bits, out, seed, preset_name, overrides, backbone, backbone_weights, cache_dir):
    """Train the attention-hash network on DATA's train part and save a checkpoint.

    Backbone features are computed once and cached. The 60/40 split is per class and seeded;
    the checkpoint records the config, the backbone and its weights checksum, the class names
    and the split seed. Prints the test-part mAP of the trained model at the end.
    """
    from dahash_index.train.workflow import train_command

    out = out or default_model()
    try:
        train_command(data, bits, out, seed, preset_name, list(overrides), backbone,
                      backbone_weights, cache_dir)
    except (ValueError, OSError, RuntimeError) as err:
        fail(err)


@click.command(short_help="Fit a trained model to an archive without labels.")
@click.option("--data", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="The archive: scene files at any depth under DATA. Folder and file names are "
                   "never used (scenes are taken in the order of their bytes' SHA-256).")
@click.option("--model", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help=f"The trained checkpoint [default: {HOME_HELP}/model.pt].")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The adapted checkpoint to write (build and query the archive with it).")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of ITQ's start.")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Feature cache "
                   "[default: $DAHASH_INDEX_CACHE or ~/.cache/dahash-index/features].")
def adapt(data, model, out, seed, cache_dir):
    """Fit MODEL's codes and re-rank vectors to the archive DATA, without labels.

    Keeps the model's backbone and K. On DATA's scenes, their mirror images and their 90°
    rotations it fits the re-rank projection (the directions along which scenes differ most
    relative to how a flip or a turn moves one), then ITQ codes on that projection: a linear
    hash head. Costs three backbone passes over DATA (features are cached). Measured against
    ITQ and float cosine in docs/results-transfer.md (dahash-index eval --transfer).
    """
    from dahash_index.train.workflow import adapt_command

    try:
        adapt_command(data, model or default_model(), out, cache_dir, seed)
    except (ValueError, OSError, RuntimeError) as err:
        fail(err)


@click.command(name="eval", short_help="Evaluate the method and its baselines (METHOD.md).")
@click.option("--data", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Labelled image-folder dataset (DATA/<class>/<scene>).")
@click.option("--model", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="A trained checkpoint: its config is the 'full' method, its backbone is used, "
                   "and the checkpoint itself is scored on its own split.")
@click.option("--bits", "bits_text", default="16,32,48,64", show_default=True,
              help="Code lengths to report.")
@click.option("--seeds", "seeds_text", default="0,1,2", show_default=True,
              help="Seeds (split and initialisation); mean ± std over them.")
@click.option("--variants", default="core", show_default=True,
              help="Comma-separated variant names, 'core' (full, no attention, MiLAN) or 'all' "
                   "(also every attention, loss, centre, standardisation, dropout, "
                   "orientation and early-stopping ablation).")
@click.option("--protocols", "protocols_text", default=None,
              help="'standard' (60/40 split, all classes), 'novel' (a seeded quarter of the "
                   "classes, 5 of UC Merced's 21, held out of training; retrieval among them) "
                   "and/or 'transfer' (with --transfer) [default: standard,novel, and "
                   "transfer when --transfer is given].")
@click.option("--transfer", type=click.Path(file_okay=False, path_type=Path), default=None,
              metavar="ARCHIVE",
              help="The transfer protocol: train on all of DATA, code every scene of ARCHIVE "
                   "(ARCHIVE/<class>/<scene>), rank each against all the others; ARCHIVE's "
                   "folder labels only score. Rows: the model's codes, re-ranked, after "
                   "adapt, float cosine, ITQ and PCA-sign fitted on ARCHIVE, LDA.")
@click.option("--rerank", type=click.Choice(RERANKS), default=DEFAULT_RERANK, show_default=True,
              help="Also score the standard and novel protocols' rankings re-ranked by each "
                   "model's re-rank vectors this way (none: Hamming distance only).")
@click.option("--novel-variants", default=None,
              help="Variants for the novel-class protocol [default: --variants].")
@click.option("--merge", is_flag=True,
              help="Keep the results already in OUT (same dataset, seeds and config) and "
                   "report both runs: e.g. ablations at one K, the core variants at others.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("eval"),
              show_default=True, help="Directory for results.json and the PR curves.")
@click.option("--report", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Markdown report to write [default: OUT/report.md].")
@click.option("--jobs", default=1, show_default=True, type=click.IntRange(min=1),
              help="Networks trained at once (worker processes sharing the cores).")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Feature cache directory.")
def evaluate(data, model, bits_text, seeds_text, variants, protocols_text, transfer, rerank,
             novel_variants, merge, out, report, jobs, cache_dir):
    """Reproduce the evaluation of METHOD.md sections 5 and 6 on DATA in one run.

    For each K and seed: the chosen variants (the full method, its ablations, the MiLAN
    re-implementation) and LDA on the float features, under the standard and the novel-class
    protocol. Writes OUT/report.md, OUT/results.json and OUT/pr-K.png.
    """
    from dahash_index.train.workflow import eval_command

    command = "dahash-index " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    try:
        if protocols_text is None:
            protocols_text = "standard,novel" + (",transfer" if transfer else "")
        protocols = tuple(p.strip() for p in protocols_text.split(",") if p.strip())
        report = eval_command(data, model, _int_list(bits_text), _int_list(seeds_text),
                              variants, out, cache_dir, command, report, jobs, protocols,
                              novel_variants, merge, rerank, transfer)
    except (ValueError, OSError, RuntimeError) as err:
        fail(err)
    click.echo(f"wrote {report}")
