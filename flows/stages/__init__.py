"""The pipeline's stages (prepare, train, sample, evaluate, register, compare): thin functions of validated params."""
