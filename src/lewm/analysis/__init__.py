"""What a trained LeWM knows about physics: probing, surprise, straightening, rollouts.

Every analysis reads a checkpoint and an episode file and returns plain results (dicts of
numbers) that ``lewm.report`` can render. Submodules are imported directly (e.g.
``lewm.analysis.probe``) so that training, which logs straightness, never pays for scipy.
"""
