"""Learning-rate schedules as functions of the fractional epoch (0 at the start of training)."""
import math


def learning_rate(sched, base_lr, epoch, total_epochs):
    """The learning rate at fractional epoch `epoch` in [0, total_epochs)."""
    if sched["name"] == "exponential":  # the seed: x gamma after every epoch
        return base_lr * sched["gamma"] ** math.floor(epoch)
    warm = sched["warmup_epochs"]
    if epoch < warm:  # linear warm-up
        return base_lr * (epoch + 1e-3) / warm
    span = max(total_epochs - warm, 1e-9)
    return base_lr * (sched["final_lr"] / base_lr) ** ((epoch - warm) / span)  # exponential decay to final_lr
