"""Checks across the sections of params.yaml: what no one section can see alone (a run named in
train.frameworks has its recipe, an NFE-sweep point fits the run's process, the batch splits over
the Ray workers). They run once the whole tree is built (`Params.check`), so a value that only
fails beside another stops the command before any stage does work, naming the dotted field.

Each function takes the built `Params` (params.py, which calls them: not imported here).
"""
from __future__ import annotations

from diffusion_core.frameworks import FRAMEWORKS
from flows.config.ladder import parse_ladder, rungs
from flows.config.recipes import check_recipes, run_section_name, split_run, with_recipe
from flows.config.sweep import sweep_points
from flows.config.validation import ConfigError, check_numbers, check_sampler, require


def check_params(params, name: str) -> None:
    """Checks across sections: each framework's recipes, the runs train.frameworks and the
    NFE sweep name, finite numbers and seeds, and what the stages would refuse late (DDIM
    steps against the chain, the batch split over the Ray workers)."""
    check_numbers(params, name)
    for framework in FRAMEWORKS:
        section = getattr(params, framework)
        check_recipes(section, framework)
        for recipe in section.recipes:
            check_numbers(with_recipe(section, recipe, framework), f"{framework}.recipes.{recipe}")
        for key in [framework, *(f"{framework}-{recipe}" for recipe in section.recipes)]:
            _check_choices(params, key)
    for key in params.train.frameworks:
        _check_run_exists(params, key, "train.frameworks")
    for i, spec in enumerate(params.compare.ladders):
        rungs(params, parse_ladder(spec, f"compare.ladders[{i}]"))  # its recipes exist and resolve
    for i, entry in enumerate(params.evaluate.nfe_sweep):
        for key in entry.get("frameworks", []):
            _check_run_exists(params, key, f"evaluate.nfe_sweep[{i}].frameworks")
    for key in params.train.frameworks:
        _check_chain_samplers(params, key)
    known = params.data.known_data()
    if known is not None:
        check_data(params, *known)


def _check_choices(params, key: str) -> None:
    """The run's training choices resolve over the shared defaults, on the data's kind where
    the source fixes it (else on images: a vector run's are checked by its train stage)."""
    known = params.data.known_data()
    kind = "vector" if known is not None and len(known[0]) == 1 else "image"
    choices = params.training(key, kind)
    for part in ("network", "ema", "optimizer"):
        check_numbers(getattr(choices, part), f"{run_section_name(key)}.{part}")


def _check_run_exists(params, key: str, where: str) -> None:
    """A run key names a framework and, optionally, one of its section's recipes."""
    framework, recipe = split_run(key)
    known = sorted(getattr(params, framework).recipes)
    require(recipe is None or recipe in known, where,
            f"{key!r}: {framework} has no recipe {recipe!r}; known: {known}")


def _check_chain_samplers(params, key: str) -> None:
    """Each NFE-sweep point that draws from the run fits the run's process as the core checks
    it before drawing (`check_fits`: DDIM's steps on the chain, a ladder's rungs); the sample
    stage would refuse it only after training. (The run's own sampler is checked so by its
    section.)"""
    process = params.framework(key).process_config()
    for i, entry in enumerate(params.evaluate.nfe_sweep):
        for point in sweep_points([entry], key, process["kind"]):
            try:
                check_sampler(point, f"evaluate.nfe_sweep[{i}]", process)
            except ConfigError as err:
                raise ConfigError(f"{err} (run {key!r}, a {process['kind']} process of "
                                  f"N = {process['N']} steps)") from err


def check_data(params, shape, n_train: int, n_references: tuple[int, ...]) -> None:
    """Checks that need the data's per-example shape and split sizes, as the stages meet
    them: the batch split over the Ray workers and the U-Net's down-sampling (train),
    precision/recall's k and the floors' train subsets (evaluate). `check_params` runs them
    where the source fixes the data (toys, digits); prepare runs them on the data it read,
    before writing shards. `n_references`: the sizes of the splits evaluate may score
    against (val, test). (Exact score matching's dimension limit stays with the train
    stage's model config, which refuses it before any run.)"""
    kind = "vector" if len(shape) == 1 else "image"
    profile, workers = params.profile(kind), params.ray.num_workers
    require(profile.batch_size >= workers, f"{kind}.batch_size",
            f"{profile.batch_size} is split over ray.num_workers={workers} Ray Train workers; "
            f"need batch_size >= ray.num_workers")
    if kind == "image":
        _check_image_data(params, shape, min(n_references))
    else:
        n = min(profile.num_samples, max(n_references))
        require(n_train >= n, "vector.num_samples",
                f"evaluate sets {n} samples against a held-out split and floors them with "
                f"train subsets of {n}, but the train split holds {n_train} examples")


def _check_image_data(params, shape, n_reference: int) -> None:
    """The U-Net halves the sides once per level after the first; precision/recall's k-NN
    needs more points than k in every set it compares."""
    mults, (height, width) = params.image.network.mults, shape[1:]
    step = 2 ** (len(mults) - 1)
    require(height % step == 0 and width % step == 0, "image.network.mults",
            f"{len(mults)} levels halve the images {len(mults) - 1} times, so their sides must be "
            f"divisible by {step}; these images are {height}×{width}")
    smallest = min(params.image.num_samples, params.evaluate.max_pairwise, n_reference)
    require(params.evaluate.pr_k < smallest, "evaluate.pr_k",
            f"the k-NN of precision/recall needs k below the smallest set it compares: "
            f"min(image.num_samples, evaluate.max_pairwise, the val and test sizes) = {smallest}")
