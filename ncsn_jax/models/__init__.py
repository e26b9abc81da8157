"""Score networks and their building blocks (flax.linen, NHWC).

`create_model(config)` builds the network a config names; `refinenet` holds
the networks, `layers`, `normalization` and `pooling` their parts.
"""

from ncsn_jax.models.refinenet import check_image_size
from ncsn_jax.models.refinenet import count_params
from ncsn_jax.models.refinenet import create_model
from ncsn_jax.models.score import make_score_fn
