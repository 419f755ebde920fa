"""One module per library gslora imports models from and exports them to: Hugging Face, torchvision, timm, and the
authors' Face Transformer; ``common`` holds what they share."""
