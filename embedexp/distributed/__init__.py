"""Large effective batches: a differentiable cross-rank all-gather (`gather`) and GradCache (`grad_cache`).

Both are tested to give the gradient of one big batch in a single process (2 gloo processes, relative error < 1e-5).
"""
