"""Score networks and their building blocks (flax.linen, NHWC).

`create_model(config)` builds the network a config names (`refinenet`, from
the blocks of `layers` and the norms of `normalization`); `score` turns a
network into a score function and holds the noise levels and input space.
"""

from ncsn_jax.models.refinenet import count_params
from ncsn_jax.models.refinenet import create_model
from ncsn_jax.models.score import get_sigmas
from ncsn_jax.models.score import make_score_fn
