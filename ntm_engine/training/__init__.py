"""Training, distillation and evaluation runs (``docs/design.md`` section 4), bottom to top:

* :mod:`.errors`, :mod:`.sections`, :mod:`.config`, :mod:`.distill_config` -- typed configs,
  their flat ``config.json`` form and its upgrades from older versions
* :mod:`.determinism`, :mod:`.optim`, :mod:`.metrics_log` -- seeds and RNG states, schedule,
  AdamW, EMA and the guarded update, ``metrics.jsonl``
* :mod:`.batches`, :mod:`.objectives`, :mod:`.factory`, :mod:`.evaluation` -- data, losses as
  objects, the model factory, held-out metrics; :mod:`.decoder` -- a latent run's
  ``--decoder`` (latents to images)
* :mod:`.run_folder`, :mod:`.session`, :mod:`.loop` -- the folder lock, checkpointed state and
  the resumable loop
* :mod:`.trainer`, :mod:`.distiller`, :mod:`.runs` -- the two run types, and loading their
  results (:func:`load_run`)
"""
from .batches import (DataSource, eval_bins, hand_in, run_data, sample_conditions, sample_labels,
                      test_data)
from .config import (CONFIG_VERSION, IDENTITY_KEYS, MODEL_OPTIONS, TRAIN_DEFAULTS,
                     ObjectiveConfig, TrainConfig, config_differences, default_model_config,
                     make_config, upgrade, validate_config)
from .determinism import (check_model_code, derive_seed, device_generator,
                          model_code_fingerprint, rng_states, set_rng_states)
from .distill_config import DISTILL_DEFAULTS, KIND, DistillConfig, make_distill_config
from .distiller import Distiller
from .errors import ConfigError, NonFiniteLossError
from .decoder import Decoder, load_decoder, run_decoder
from .evaluation import (default_sample_steps, eval_summary, evaluate_bpd, evaluate_test,
                         grid_images, histogram_bpd, latent_quality, likelihood_key,
                         raw_quality)
from .factory import REFERENCE_FILE, build_model, fm_reg_weight
from .loop import Loop, run_command
from .metrics_log import METRICS_FILE, read_metrics
from .objectives import DistillBatch, distillation_batch
from .optim import EMA, budget_progress, learning_rate
from .precision import PRECISIONS
from .run_folder import CONFIG_FILE
from .runs import Run, check_denoiser_fits, denoiser_for, export_run, load_denoiser, load_run
from .sections import DATASETS, IMAGE_NAMES, DataConfig, OptimConfig, RunConfig
from .trainer import Trainer

__all__ = [n for n in dir() if not n.startswith("_")]
