"""Distances between student and teacher feature maps, per sample, differentiable.

Every function takes two tensors of the same shape, (B, H, W, C) feature maps or (B, D) pooled
features, and returns a (B,) float32 tensor (one distance per sample); the Distiller weighs
and batch-averages them (:class:`chestkd.distill.feature_terms.FeatureTerm`).

``wasserstein(s, t, p=1)``
    the p-Wasserstein distance between the empirical 1-D distributions of the two maps'
    values. With n values each, the optimal coupling of two 1-D empirical distributions
    matches them in sorted order, so

    .. math:: W_p(s, t) = \\Big(\\frac{1}{n}\\sum_i |s_{(i)} - t_{(i)}|^p\\Big)^{1/p}

    with :math:`s_{(i)}` the i-th smallest value. p = 1 is ``scipy.stats.wasserstein_distance``;
    p = 2 is ``sqrt(mean((sort(s) - sort(t))**2))``. This is the teacher-assistant paper's
    :math:`(\\inf E[d(f_S, f_A)^p])^{1/p}` (Eq. 4) for maps whose values are the samples of
    :math:`f_S` and :math:`f_A`. ``per_channel=True`` compares each channel's H·W values
    separately and averages over channels. Gradients flow through the sort (the gradient of
    a sorted value is routed back to the element it came from).
``feature_kl(s, t, temperature, mode)``
    ``"channel"``: channel-wise distillation (Shu et al. 2021): per channel a softmax over the
    H·W positions of the map divided by T, :math:`KL(p_t \\| p_s)`, times :math:`T^2`, mean
    over channels. ``"attention"``: one spatial map per sample, the mean over channels of the
    squared activations, a softmax over the positions (of the map divided by T),
    :math:`KL(p_t \\| p_s)`, times :math:`T^2` (at the default T = 1 exactly the plain KL).
    The map is Zagoruyko & Komodakis' attention map, but this is *not* their attention
    transfer (that is :func:`attention_transfer`): the maps are not L2-normalised, so the
    softmax and the divergence depend on the activations' scale (a student whose features are
    twice as large gets another loss, and a large scale makes the softmax nearly one-hot);
    chestkd's own variant, kept for the runs that used it. Attention maps need no matching
    channel count. Either mode is the teacher-assistant paper's
    :math:`\\lambda_1 E_{x\\sim P}[\\log f_T / f_A]` (Eq. 3) made concrete: a feature map is
    turned into a distribution over positions, and :math:`E_{x\\sim f_T}[\\log f_T(x) / f_A(x)]`
    is then the KL divergence of teacher from assistant.
``attention_transfer(s, t, p=2, squared=False)``
    attention transfer as published (Zagoruyko & Komodakis 2017, Eq. 2 with their
    :math:`F(A) = \\sum_c |A_c|^p`, p = 2): per sample the attention vector
    :math:`q = \\mathrm{vec}(\\frac{1}{C}\\sum_c |A_c|^p)` over the H·W positions, L2-normalised,
    and the L2 distance :math:`\\| q_s / \\|q_s\\|_2 - q_t / \\|q_t\\|_2 \\|_2` (the paper's norm,
    not squared; the mean over channels instead of their sum is removed by the normalisation).
    ``squared=True`` returns the squared distance, what the authors' public code minimises
    (averaged there over the H·W positions, with :math:`\\beta = 10^3`). The paper's
    :math:`\\beta/2` is the term's ``weight``. Invariant to a positive rescaling of either
    map. Needs equal H and W; the channel counts may differ (no adapter).
``mse(s, t)``
    FitNets' hint (Romero et al. 2015): the mean over all values of :math:`(s - t)^2`.

All are computed in float32 (also under mixed precision).
"""
from __future__ import annotations

from keras import ops

from chestkd.errors import ConfigError

FEATURE_KL_MODES = ("channel", "attention")


def _pair(student_maps, teacher_maps, name):
    student = ops.cast(student_maps, "float32")
    teacher = ops.cast(teacher_maps, "float32")
    if tuple(student.shape[1:]) != tuple(teacher.shape[1:]):
        raise ConfigError(f"{name}: student maps {tuple(student.shape)} and teacher maps "
                          f"{tuple(teacher.shape)} differ in shape (a FeatureTerm adapter and "
                          f"resize match them)")
    return student, teacher


def _safe_root(mean_power, p):
    """:math:`m^{1/p}` with a zero (not infinite or NaN) gradient at m = 0."""
    if p == 1:
        return mean_power
    positive = mean_power > 0
    safe = ops.where(positive, mean_power, ops.ones_like(mean_power))
    return ops.where(positive, ops.power(safe, 1.0 / p), ops.zeros_like(mean_power))


def wasserstein(student_maps, teacher_maps, p=1, per_channel=False):
    """(B,) p-Wasserstein distance between the value distributions of each sample's maps.

    ``per_channel``: the distance between each channel's H·W values, mean over channels
    (maps must be (B, ..., C)). See the module docstring for the formula.
    """
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not p >= 1:
        raise ConfigError(f"wasserstein: 'p' must be a number >= 1, got {p!r}")
    student, teacher = _pair(student_maps, teacher_maps, "wasserstein")
    channels = student.shape[-1]
    if per_channel:
        # (B, positions, C) -> (B, C, positions): one distribution per channel.
        student = ops.transpose(ops.reshape(student, (-1, _count(student) // channels,
                                                      channels)), (0, 2, 1))
        teacher = ops.transpose(ops.reshape(teacher, (-1, _count(teacher) // channels,
                                                      channels)), (0, 2, 1))
    else:
        student = ops.reshape(student, (-1, _count(student)))
        teacher = ops.reshape(teacher, (-1, _count(teacher)))
    difference = ops.abs(ops.sort(student, axis=-1) - ops.sort(teacher, axis=-1))
    mean_power = ops.mean(difference if p == 1 else ops.power(difference, float(p)), axis=-1)
    distance = _safe_root(mean_power, float(p))
    return ops.mean(distance, axis=-1) if per_channel else distance


def _count(tensor):
    count = 1
    for size in tensor.shape[1:]:
        count *= int(size)
    return count


def _kl_over_last_axis(student_scores, teacher_scores):
    log_p_teacher = ops.log_softmax(teacher_scores, axis=-1)
    log_p_student = ops.log_softmax(student_scores, axis=-1)
    return ops.sum(ops.exp(log_p_teacher) * (log_p_teacher - log_p_student), axis=-1)


def feature_kl(student_maps, teacher_maps, temperature=1.0, mode="channel"):
    """(B,) KL(teacher || student) of the maps as distributions over positions (docstring)."""
    if mode not in FEATURE_KL_MODES:
        raise ConfigError(f"feature_kl: unknown option 'mode'={mode!r}; choose one of "
                          f"{list(FEATURE_KL_MODES)}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
            or not temperature > 0:
        raise ConfigError(f"feature_kl: 'temperature' must be a number > 0, got {temperature!r}")
    student = ops.cast(student_maps, "float32")
    teacher = ops.cast(teacher_maps, "float32")
    if len(student.shape) != 4 or len(teacher.shape) != 4:
        raise ConfigError(f"feature_kl: needs (B, H, W, C) feature maps, got "
                          f"{tuple(student.shape)} and {tuple(teacher.shape)}")
    t = float(temperature)
    if mode == "attention":
        if tuple(student.shape[1:3]) != tuple(teacher.shape[1:3]):
            raise ConfigError(f"feature_kl(attention): spatial sizes differ, "
                              f"{tuple(student.shape)} vs {tuple(teacher.shape)}")
        positions = int(student.shape[1]) * int(student.shape[2])
        student_attention = ops.reshape(ops.mean(ops.square(student), axis=-1), (-1, positions))
        teacher_attention = ops.reshape(ops.mean(ops.square(teacher), axis=-1), (-1, positions))
        return t * t * _kl_over_last_axis(student_attention / t, teacher_attention / t)
    student, teacher = _pair(student, teacher, "feature_kl(channel)")
    height, width, channels = (int(size) for size in student.shape[1:])
    # (B, H, W, C) -> (B, C, H*W): a distribution over positions per channel.
    student = ops.transpose(ops.reshape(student, (-1, height * width, channels)), (0, 2, 1))
    teacher = ops.transpose(ops.reshape(teacher, (-1, height * width, channels)), (0, 2, 1))
    return t * t * ops.mean(_kl_over_last_axis(student / t, teacher / t), axis=-1)


def attention_map(maps, p=2):
    """(B, H·W) L2-normalised attention vectors of (B, H, W, C) maps: mean over channels of
    ``|A|**p``, flattened, divided by its L2 norm (an all-zero map stays zero)."""
    positions = int(maps.shape[1]) * int(maps.shape[2])
    magnitude = ops.abs(maps)
    powered = ops.square(magnitude) if p == 2 else ops.power(magnitude, float(p))
    attention = ops.reshape(ops.mean(powered, axis=-1), (-1, positions))
    squared_norm = ops.sum(ops.square(attention), axis=-1, keepdims=True)
    # max(norm, 1e-12) as torch.nn.functional.normalize, with a finite gradient at zero.
    return attention / ops.sqrt(ops.maximum(squared_norm, 1e-24))


def attention_transfer(student_maps, teacher_maps, p=2, squared=False):
    """(B,) distance of the L2-normalised attention maps (Zagoruyko & Komodakis; docstring)."""
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not p > 0:
        raise ConfigError(f"attention_transfer: 'p' must be a number > 0, got {p!r}")
    if not isinstance(squared, bool):
        raise ConfigError(f"attention_transfer: 'squared' must be true or false, got "
                          f"{squared!r}")
    student = ops.cast(student_maps, "float32")
    teacher = ops.cast(teacher_maps, "float32")
    if len(student.shape) != 4 or len(teacher.shape) != 4:
        raise ConfigError(f"attention_transfer: needs (B, H, W, C) feature maps, got "
                          f"{tuple(student.shape)} and {tuple(teacher.shape)}")
    if tuple(student.shape[1:3]) != tuple(teacher.shape[1:3]):
        raise ConfigError(f"attention_transfer: spatial sizes differ, {tuple(student.shape)} "
                          f"vs {tuple(teacher.shape)} (a FeatureTerm resizes them)")
    difference = attention_map(student, p) - attention_map(teacher, p)
    squared_distance = ops.sum(ops.square(difference), axis=-1)
    return squared_distance if squared else _safe_root(squared_distance, 2.0)


def mse(student_maps, teacher_maps):
    """(B,) mean over all values of the squared difference (the FitNets hint)."""
    student, teacher = _pair(student_maps, teacher_maps, "mse")
    return ops.mean(ops.reshape(ops.square(student - teacher), (-1, _count(student))), axis=-1)


# distance name -> (function, options it accepts)
DISTANCES = {
    "wasserstein": (wasserstein, ("p", "per_channel")),
    "feature_kl": (feature_kl, ("temperature", "mode")),
    "attention_transfer": (attention_transfer, ("p", "squared")),
    "mse": (mse, ()),
}
