"""Modal screens: confirmations, the server form, the LoRA picker, the large image preview."""
