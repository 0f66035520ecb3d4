"""Applications built on dvt-runtime (the webcam demo)."""
