"""GPFM's unified knowledge distillation (expert + self) from served teachers, and export into the zoo."""
