import jax

# Tests run in float64; float32 cases ask for it explicitly.
jax.config.update("jax_enable_x64", True)
