"""Strong lottery tickets in partially frozen random networks: the pruners, the frozen allocation, the models."""
