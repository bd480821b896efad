"""The distillation step without the trainer: teacher loading, row gathering, the loss
module, on-policy sampling, the teacher-fit check."""
