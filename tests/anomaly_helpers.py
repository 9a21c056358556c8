"""What the anomaly tests share."""

# Tiny random encoders: the frames at 32 px through a 2-stage CNN, the track through a mel-CNN.
TINY_ENCODERS = {
    "video": {
        "encoder": "frames",
        "options": {
            "frames": 4,
            "image": "cnn",
            "image_options": {"width": 8, "stages": 2, "image_size": 32},
        },
    },
    "audio": {"encoder": "mel-cnn", "options": {"width": 8, "stages": 2, "n_mels": 32}},
}
