"""Where and how the networks run: devices and precision, processes under torchrun, memory.

Used by every stage that runs a network (training, features, detection, evaluation); it
imports nothing of theirs.
"""
