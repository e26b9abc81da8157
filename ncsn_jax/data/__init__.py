"""Input pipelines: tfds data sets, image folders and the embedded digits."""
