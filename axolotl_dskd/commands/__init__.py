"""The user commands (align, eval, teacher-fit, demo) and the embedded assets they fetch."""
