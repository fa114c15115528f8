"""The registered pyfunc, logged as code (MLflow's models from code), for MLflow's own tools
(`mlflow models serve`, `mlflow.pyfunc.load_model`). MLflow runs this stored file, and puts the
version's stored ``code/`` folders (``diffusion_core``, ``flows``) on the import path, whenever it
loads the model: loading it that way runs whatever the artifact store holds. The project's own
loader, ``flows.tracking.registry.load_sampler``, runs none of it: it checks every stored file
against the digests recorded at registration and builds ``flows.tracking.sampler`` from the
installed code.

``predict(None, params={"num_samples", "seed", "sampler", "steps"})`` is
``RegisteredSampler.predict``: sample i of seed s is the pipeline's sample i of ``sample.seed = s``.
"""
from __future__ import annotations

from pathlib import Path

import mlflow

from flows.tracking.sampler import RegisteredSampler, check_fits  # noqa: F401  (check_fits: its old home)


class SamplerModel(mlflow.pyfunc.PythonModel):
    """pyfunc flavour of a trained framework: predict draws samples."""

    # predict takes no input data (params say what to draw): MLflow's type-hint validation
    # has nothing to check, so it is switched off rather than warned about
    _skip_type_hint_validation = True

    def load_context(self, context):
        self.sampler = RegisteredSampler.from_files(Path(context.artifacts["spec"]),
                                                    Path(context.artifacts["model_dir"]))

    def predict(self, context, model_input, params=None):
        return self.sampler.predict(model_input, params)


mlflow.models.set_model(SamplerModel())
