"""The distillation step without the trainer: row gathering, the loss module, on-policy
sampling."""
