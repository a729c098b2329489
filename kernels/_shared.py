"""Two small helpers every kernel module needs."""

import keras
from keras import ops


def as_tensor(value, dtype=None):
    """A tensor, never a Keras variable: tf.custom_gradient refuses functions that
    read variables, and on TensorFlow ``ops.convert_to_tensor`` keeps a variable."""
    value = ops.convert_to_tensor(value)
    return ops.cast(value, dtype or value.dtype)


def standardize_data_format(data_format):
    data_format = data_format or keras.config.image_data_format()
    if data_format not in ("channels_last", "channels_first"):
        raise ValueError(
            "data_format must be 'channels_last' or 'channels_first', "
            f"got {data_format!r}"
        )
    return data_format
