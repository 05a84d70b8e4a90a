"""Feature-map distances against float64 NumPy/SciPy references, and their gradients."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
from scipy.stats import wasserstein_distance  # noqa: E402

from chestkd.distill.feature_distances import (attention_transfer, feature_kl, mse,  # noqa: E402
                                      wasserstein)
from chestkd.errors import ConfigError  # noqa: E402


def maps(seed, shape=(3, 4, 5, 6), scale=1.0, shift=0.0):
    rng = np.random.default_rng(seed)
    return (shift + scale * rng.normal(size=shape)).astype(np.float32)


def log_softmax(z, axis):
    z = z - z.max(axis=axis, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=axis, keepdims=True))


def kl_rows(student_scores, teacher_scores):
    """KL(softmax(teacher) || softmax(student)) along the last axis, float64."""
    log_t, log_s = log_softmax(teacher_scores, -1), log_softmax(student_scores, -1)
    return (np.exp(log_t) * (log_t - log_s)).sum(-1)


def test_wasserstein_p1_equals_scipy_and_p2_the_sorted_quantile_formula():
    s, t = maps(0), maps(1, scale=2.0, shift=0.5)
    s64, t64 = s.reshape(3, -1).astype(np.float64), t.reshape(3, -1).astype(np.float64)
    expected = [wasserstein_distance(a, b) for a, b in zip(s64, t64)]
    np.testing.assert_allclose(wasserstein(s, t, p=1), expected, rtol=1e-5)
    expected_p2 = np.sqrt(((np.sort(s64, 1) - np.sort(t64, 1)) ** 2).mean(1))
    np.testing.assert_allclose(wasserstein(s, t, p=2), expected_p2, rtol=1e-5)
    expected_p3 = (np.abs(np.sort(s64, 1) - np.sort(t64, 1)) ** 3).mean(1) ** (1 / 3)
    np.testing.assert_allclose(wasserstein(s, t, p=3), expected_p3, rtol=1e-5)
    # Per channel: each channel's 4x5 values are one distribution, mean over the 6 channels.
    per_channel = [np.mean([wasserstein_distance(s[b, ..., c].ravel(), t[b, ..., c].ravel())
                            for c in range(6)]) for b in range(3)]
    np.testing.assert_allclose(wasserstein(s, t, per_channel=True), per_channel, rtol=1e-5)
    assert not np.allclose(per_channel, expected)  # the option changes the distance
    # A permutation of the values is the same distribution: distance 0 (and 0 for p=2).
    shuffled = s.reshape(3, -1)[:, np.random.default_rng(2).permutation(120)].reshape(s.shape)
    np.testing.assert_allclose(wasserstein(s, shuffled, p=1), 0.0, atol=1e-6)
    np.testing.assert_allclose(wasserstein(s, shuffled, p=2), 0.0, atol=1e-6)
    # Pooled (B, D) features work the same way.
    np.testing.assert_allclose(wasserstein(s64[:, :10], t64[:, :10]),
                               [wasserstein_distance(a, b) for a, b in
                                zip(s64[:, :10], t64[:, :10])], rtol=1e-5)


def test_wasserstein_gradient_flows_through_the_sort_to_the_right_elements():
    s, t = maps(3, shape=(2, 3, 3, 2)), maps(4, shape=(2, 3, 3, 2), shift=0.3)
    student = tf.Variable(s)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(wasserstein(student, t, p=1))
    gradient = tape.gradient(loss, student).numpy().reshape(2, -1)
    # d W1 / d s_i = sign(s_i - t_(rank of s_i)) / n: the sorted value's gradient goes back
    # to the element it came from.
    flat_s, flat_t = s.reshape(2, -1).astype(np.float64), t.reshape(2, -1).astype(np.float64)
    expected = np.zeros_like(flat_s)
    for b in range(2):
        order = np.argsort(flat_s[b])
        expected[b, order] = np.sign(flat_s[b, order] - np.sort(flat_t[b])) / flat_s.shape[1]
    np.testing.assert_allclose(gradient, expected, rtol=1e-5, atol=1e-7)
    assert np.all(np.isfinite(gradient)) and np.abs(gradient).sum() > 0
    for p in (2, 3):  # finite also where the distance is 0 (identical maps)
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(wasserstein(student, tf.concat([s[:1], t[1:]], 0), p=p))
        gradient = tape.gradient(loss, student).numpy()
        assert np.all(np.isfinite(gradient))
        assert np.abs(gradient[0]).sum() == 0 and np.abs(gradient[1]).sum() > 0


def test_channel_feature_kl_equals_numpy_reference_with_temperature_squared():
    s, t = maps(5, scale=2.0), maps(6, scale=3.0)
    for temperature in (1.0, 4.0):
        s64, t64 = s.astype(np.float64) / temperature, t.astype(np.float64) / temperature
        # per channel: a distribution over the 4*5 positions
        per_channel = kl_rows(s64.reshape(3, 20, 6).transpose(0, 2, 1),
                              t64.reshape(3, 20, 6).transpose(0, 2, 1))  # (B, C)
        expected = temperature ** 2 * per_channel.mean(1)
        np.testing.assert_allclose(feature_kl(s, t, temperature, mode="channel"), expected,
                                   rtol=1e-5)
    np.testing.assert_allclose(feature_kl(t, t), 0.0, atol=1e-6)
    assert np.all(np.asarray(feature_kl(s, t)) > 0)


def test_attention_feature_kl_equals_numpy_reference_and_ignores_channel_count():
    s, t = maps(7, shape=(3, 4, 5, 6)), maps(8, shape=(3, 4, 5, 9), scale=2.0)
    attention_s = (s.astype(np.float64) ** 2).mean(-1).reshape(3, 20)
    attention_t = (t.astype(np.float64) ** 2).mean(-1).reshape(3, 20)
    np.testing.assert_allclose(feature_kl(s, t, mode="attention"),
                               kl_rows(attention_s, attention_t), rtol=1e-5)
    np.testing.assert_allclose(feature_kl(s, t, 2.0, mode="attention"),
                               4.0 * kl_rows(attention_s / 2, attention_t / 2), rtol=1e-5)


def attention_transfer_reference(student, teacher, p=2, squared=False):
    """Zagoruyko & Komodakis' AT distance in float64: L2-normalised mean_c |A|^p maps."""
    def normalised(maps):
        q = (np.abs(maps.astype(np.float64)) ** p).mean(-1).reshape(len(maps), -1)
        return q / np.linalg.norm(q, axis=1, keepdims=True)
    distance = np.linalg.norm(normalised(student) - normalised(teacher), axis=1)
    return distance ** 2 if squared else distance


def test_attention_transfer_equals_a_float64_reference_for_any_channel_count():
    s, t = maps(7, shape=(3, 4, 5, 6)), maps(8, shape=(3, 4, 5, 9), scale=2.0)
    np.testing.assert_allclose(attention_transfer(s, t), attention_transfer_reference(s, t),
                               rtol=1e-5)
    np.testing.assert_allclose(attention_transfer(s, t, squared=True),
                               attention_transfer_reference(s, t, squared=True), rtol=1e-5)
    np.testing.assert_allclose(attention_transfer(s, t, p=1),
                               attention_transfer_reference(s, t, p=1), rtol=1e-5)
    # With the channel *sum* (the paper's F) instead of the mean: the same, normalisation
    # removes the 1/C.
    summed = lambda m: (m.astype(np.float64) ** 2).sum(-1).reshape(3, -1)  # noqa: E731
    qs, qt = summed(s), summed(t)
    paper = np.linalg.norm(qs / np.linalg.norm(qs, axis=1, keepdims=True)
                           - qt / np.linalg.norm(qt, axis=1, keepdims=True), axis=1)
    np.testing.assert_allclose(attention_transfer(s, t), paper, rtol=1e-5)
    np.testing.assert_allclose(attention_transfer(t, t), 0.0, atol=1e-6)
    assert np.all(np.asarray(attention_transfer(s, t)) <= np.sqrt(2) + 1e-6)   # unit vectors


@pytest.mark.parametrize("factor", [1e-3, 0.5, 3.0, 1e3])
def test_attention_transfer_is_invariant_to_the_scale_of_the_features(factor):
    s, t = maps(11, shape=(2, 6, 6, 4)), maps(12, shape=(2, 6, 6, 8))
    np.testing.assert_allclose(attention_transfer(factor * s, t), attention_transfer(s, t),
                               rtol=1e-5)
    np.testing.assert_allclose(attention_transfer(s, factor * t), attention_transfer(s, t),
                               rtol=1e-5)
    # The attention-KL mode is not: a rescaled student gets another loss.
    assert not np.allclose(feature_kl(factor * s, t, mode="attention"),
                           feature_kl(s, t, mode="attention"), rtol=1e-3)


def test_attention_transfer_gradients_are_finite_also_at_zero_distance_and_zero_maps():
    s, t = maps(13, shape=(2, 4, 4, 3)), maps(14, shape=(2, 4, 4, 5))
    for student, teacher in ((s, t), (s, s), (np.zeros_like(s), t)):
        variable = tf.Variable(student)
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(attention_transfer(variable, teacher))
        gradient = tape.gradient(loss, variable).numpy()
        assert np.all(np.isfinite(gradient))
    variable = tf.Variable(s)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(attention_transfer(variable, t))
    assert np.abs(tape.gradient(loss, variable).numpy()).max() > 0
    with pytest.raises(ConfigError, match="spatial sizes differ"):
        attention_transfer(s, maps(1, shape=(2, 3, 4, 3)))
    with pytest.raises(ConfigError, match="'p'"):
        attention_transfer(s, t, p=0)
    with pytest.raises(ConfigError, match="'squared'"):
        attention_transfer(s, t, squared="yes")


def test_mse_and_gradients_of_kl_are_finite_and_non_zero():
    s, t = maps(9), maps(10)
    np.testing.assert_allclose(mse(s, t), ((s.astype(np.float64) - t) ** 2).reshape(3, -1)
                               .mean(1), rtol=1e-6)
    student = tf.Variable(s)
    for mode in ("channel", "attention"):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(feature_kl(student, t, 2.0, mode=mode))
        gradient = tape.gradient(loss, student).numpy()
        assert np.all(np.isfinite(gradient)) and np.abs(gradient).max() > 0


def test_bad_arguments_raise_config_errors():
    s, t = maps(0), maps(1, shape=(3, 4, 5, 7))
    with pytest.raises(ConfigError, match="differ in shape"):
        wasserstein(s, t)
    with pytest.raises(ConfigError, match="'p'"):
        wasserstein(s, s, p=0.5)
    with pytest.raises(ConfigError, match="mode"):
        feature_kl(s, s, mode="spatial")
    with pytest.raises(ConfigError, match="temperature"):
        feature_kl(s, s, temperature=0)
    with pytest.raises(ConfigError, match="differ in shape"):
        feature_kl(s, t, mode="channel")
    with pytest.raises(ConfigError, match=r"\(B, H, W, C\)"):
        feature_kl(s[:, 0, 0], s[:, 0, 0])


# ---------------------------------------------------------- feature terms in the Distiller
import keras  # noqa: E402

from chestkd.distill import Distiller, KDLoss  # noqa: E402
from chestkd.distill.feature_terms import FeatureAlignment, FeatureTerm  # noqa: E402

SIZE, C = 16, 3


def named_model(name, seed, widths=(4, 6)):
    """conv_a (16x16) -> pool -> conv_b (8x8) -> GAP "features_pool" -> Dense "logits"."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((SIZE, SIZE, 3))
    h = keras.layers.Conv2D(widths[0], 3, padding="same", activation="relu", name="conv_a")(inputs)
    h = keras.layers.BatchNormalization(name="bn_a")(h)
    h = keras.layers.MaxPooling2D(2, name="pool_a")(h)
    h = keras.layers.Conv2D(widths[1], 3, padding="same", activation="relu", name="conv_b")(h)
    h = keras.layers.GlobalAveragePooling2D(name="features_pool")(h)
    return keras.Model(inputs, keras.layers.Dense(C, name="logits")(h), name=name)


def batch(seed=0, n=16):
    rng = np.random.default_rng(seed)
    return (rng.uniform(-1, 1, (n, SIZE, SIZE, 3)).astype(np.float32),
            (rng.random((n, C)) < 0.4).astype(np.float32))


def all_weights(model):
    return [np.array(v.numpy()) for v in model.weights]


def test_feature_terms_train_student_and_adapter_report_each_term_and_keep_teacher():
    teacher, student = named_model("teacher", 1, widths=(8, 10)), named_model("student", 2)
    rng = np.random.default_rng(3)
    for layer in teacher.layers:  # non-trivial BN statistics a training-mode teacher would move
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_mean.assign(rng.normal(size=layer.moving_mean.shape))
    terms = [FeatureTerm("conv_a", "conv_b", "wasserstein", weight=0.5),  # 16x16x4 vs 8x8x8
             FeatureTerm("conv_b", "conv_a", "feature_kl", weight=2.0,
                         options={"mode": "attention"}),
             FeatureTerm("features_pool", "features_pool", "mse", name="pooled_hint"),
             FeatureTerm("conv_a", "conv_a", "attention_transfer", weight=1.5)]  # 4 vs 8 ch.
    distiller = Distiller(student, teacher, loss=KDLoss("sigmoid", 2.0, 0.5), feature_terms=terms)
    conv_adapter, no_adapter, dense_adapter, no_at_adapter = (
        a.projection for a in distiller.feature_alignments)
    assert isinstance(conv_adapter, keras.layers.Conv2D) and conv_adapter.kernel.shape == (
        1, 1, 4, 10)
    assert no_adapter is None and no_at_adapter is None  # attention needs no channel match
    assert isinstance(dense_adapter, keras.layers.Dense) and dense_adapter.kernel.shape == (6, 10)
    teacher_before, student_before = all_weights(teacher), all_weights(student)
    adapter_before = all_weights(conv_adapter)
    distiller.compile(keras.optimizers.SGD(0.1))
    x, y = batch()
    history = distiller.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert set(history.history) == {"loss", "hard_loss", "soft_loss", "wasserstein_conv_a",
                                    "feature_kl_conv_b", "pooled_hint",
                                    "attention_transfer_conv_a", "auc"}
    assert all(np.array_equal(a, b) for a, b in zip(all_weights(teacher), teacher_before))
    assert not any(np.array_equal(a, b) for a, b in zip(all_weights(conv_adapter),
                                                        adapter_before))
    assert sum(not np.array_equal(a, b) for a, b in zip(all_weights(student),
                                                        student_before)) >= 6
    # The reported loss is the KD total plus the weighted terms, each a reference distance.
    result = distiller.evaluate(x, y, batch_size=16, verbose=0, return_dict=True)
    student_maps = keras.Model(student.input, [student.get_layer(n).output for n in
                                               ("conv_a", "conv_b", "features_pool", "logits")])
    teacher_maps = keras.Model(teacher.input, [teacher.get_layer(n).output for n in
                                               ("conv_a", "conv_b", "features_pool", "logits")])
    s_a, s_b, s_pool, s_logits = (np.asarray(v, np.float64) for v in student_maps(x))
    t_a, t_b, t_pool, t_logits = (np.asarray(v, np.float64) for v in teacher_maps(x))
    pooled_s_a = s_a.reshape(16, 8, 2, 8, 2, 4).mean((2, 4))  # 2x2 average pooling to 8x8
    kernel, bias = (np.asarray(v, np.float64) for v in conv_adapter.weights)
    adapted = pooled_s_a @ kernel[0, 0] + bias
    wasserstein_ref = np.mean([wasserstein_distance(a.ravel(), b.ravel())
                               for a, b in zip(adapted, t_b)])
    pooled_t_a = t_a.reshape(16, 8, 2, 8, 2, 8).mean((2, 4))
    attention_ref = kl_rows((s_b ** 2).mean(-1).reshape(16, -1),
                            (pooled_t_a ** 2).mean(-1).reshape(16, -1)).mean()
    dense_kernel, dense_bias = (np.asarray(v, np.float64) for v in dense_adapter.weights)
    hint_ref = (((s_pool @ dense_kernel + dense_bias) - t_pool) ** 2).mean()
    np.testing.assert_allclose(result["wasserstein_conv_a"], wasserstein_ref, rtol=1e-4)
    np.testing.assert_allclose(result["feature_kl_conv_b"], attention_ref, rtol=1e-4,
                               atol=1e-6)   # a small KL: float32 rounding is absolute
    np.testing.assert_allclose(result["pooled_hint"], hint_ref, rtol=1e-4)
    at_ref = attention_transfer_reference(s_a, t_a).mean()
    np.testing.assert_allclose(result["attention_transfer_conv_a"], at_ref, rtol=1e-4)
    kd_total = float(KDLoss("sigmoid", 2.0, 0.5)(y, s_logits.astype(np.float32),
                                                 t_logits.astype(np.float32)))
    np.testing.assert_allclose(result["loss"], kd_total + 0.5 * wasserstein_ref
                               + 2.0 * attention_ref + hint_ref + 1.5 * at_ref, rtol=1e-4)


def test_feature_terms_pull_the_student_maps_towards_the_teachers(tmp_path):
    teacher = named_model("teacher", 4, widths=(4, 6))
    x, y = batch(seed=5, n=32)
    term = FeatureTerm("conv_b", "conv_b", "mse", weight=10.0, adapter="never")
    distiller = Distiller(named_model("student", 6), teacher, loss=KDLoss("sigmoid", 1.0, 0.0),
                          feature_terms=[term])
    distiller.compile(keras.optimizers.Adam(0.02))
    before = distiller.evaluate(x, y, verbose=0, return_dict=True)["mse_conv_b"]
    distiller.fit(x, y, batch_size=16, epochs=6, verbose=0)
    after = distiller.evaluate(x, y, verbose=0, return_dict=True)["mse_conv_b"]
    assert after < 0.5 * before
    path = tmp_path / "student.keras"
    distiller.save_student(path)
    saved = keras.models.load_model(path)
    assert [layer.name for layer in saved.layers] == [layer.name for layer in
                                                      distiller.student.layers]


def test_alignment_pools_integer_ratios_and_resizes_others():
    term = FeatureTerm("s", "t", "mse")
    alignment = FeatureAlignment(term, (None, 12, 12, 3), (None, 4, 4, 3))
    s, t = maps(11, shape=(2, 12, 12, 3)), maps(12, shape=(2, 4, 4, 3))
    aligned_s, aligned_t = alignment(s, t)
    np.testing.assert_allclose(aligned_s, s.reshape(2, 4, 3, 4, 3, 3).mean((2, 4)), rtol=1e-5)
    np.testing.assert_array_equal(aligned_t, t)
    odd = FeatureAlignment(term, (None, 7, 7, 3), (None, 5, 9, 3))  # grid (5, 7)
    s, t = maps(13, shape=(2, 7, 7, 3)), maps(14, shape=(2, 5, 9, 3))
    aligned_s, aligned_t = odd(s, t)
    assert aligned_s.shape == aligned_t.shape == (2, 5, 7, 3)
    # Non-integer ratios: TF's area resize (forward only: it has no gradient) is the reference.
    np.testing.assert_allclose(aligned_s, tf.image.resize(s, (5, 7), method="area"), rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(aligned_t, tf.image.resize(t, (5, 7), method="area"), rtol=1e-5,
                               atol=1e-6)
    variable = tf.Variable(s)
    with tf.GradientTape() as tape:  # differentiable, and compiles under XLA
        loss = tf.reduce_sum(tf.function(lambda v: odd(v, t)[0], jit_compile=True)(variable))
    assert np.all(np.isfinite(tape.gradient(loss, variable)))
    with pytest.raises(ConfigError, match="adapter='never'"):
        FeatureAlignment(FeatureTerm("s", "t", adapter="never"), (None, 4, 4, 3),
                         (None, 4, 4, 5))


def test_feature_term_configuration_errors():
    teacher, student = named_model("teacher", 7), named_model("student", 8)
    term = FeatureTerm("conv_b", "conv_b", "mse")
    with pytest.raises(ConfigError, match="live teachers"):
        Distiller(student, None, loss=KDLoss(), feature_terms=[term])
    with pytest.raises(ConfigError, match="conv_z"):
        Distiller(student, teacher, loss=KDLoss(), feature_terms=[FeatureTerm("conv_z", "conv_b")])
    with pytest.raises(ConfigError, match="teacher"):
        Distiller(student, teacher, loss=KDLoss(), feature_terms=[FeatureTerm("conv_b", "conv_b",
                                                                              teacher=1)])
    with pytest.raises(ConfigError, match="pooled"):
        Distiller(student, teacher, loss=KDLoss(),
                  feature_terms=[FeatureTerm("features_pool", "features_pool", "feature_kl")])
    with pytest.raises(ConfigError, match="distance"):
        FeatureTerm("a", "b", "cosine")
    with pytest.raises(ConfigError, match="no option"):
        FeatureTerm("a", "b", "mse", options={"p": 2})
    distiller = Distiller(student, teacher, loss=KDLoss(), feature_terms=[term])
    distiller.compile("sgd")
    x, y = batch(n=4)
    with pytest.raises(ConfigError, match="cached 'teacher_logits'"):
        distiller.fit({"image": x, "teacher_logits": np.zeros((4, C), np.float32)}, y, verbose=0)


def test_layer_pairs_and_an_ensemble_teacher_split_the_feature_weight():
    from chestkd.distill.layer_pairs import depth_matched_pairs, stage_ends
    from chestkd.experiments.feature_kd import averaged_model, feature_terms_for
    from chestkd.models import build
    student = build("conv3_student", C, (32, 32, 3))
    assert stage_ends(student) == ["conv1_relu", "conv2_relu", "conv3_relu"]
    teacher = build("resnet32", C, (32, 32, 3))
    assert depth_matched_pairs(student, teacher) == [
        ("conv1_relu", "conv2_block5_out"), ("conv2_relu", "conv3_block5_out"),
        ("conv3_relu", "conv4_block5_out")]
    # ceil(k * S / n) - 1: the student's last end meets the teacher's last, 2 ends vs 3.
    two = named_model("two", 9)  # ends conv_a (16 px) ... conv_b (8 px)
    assert depth_matched_pairs(two, teacher) == [("bn_a", "conv3_block5_out"),
                                                 ("conv_b", "conv4_block5_out")]
    members = [named_model("member", 10), named_model("member", 11)]
    x, _ = batch(seed=3, n=4)
    ensemble = averaged_model(members)
    np.testing.assert_allclose(ensemble(x), (np.asarray(members[0](x), np.float64)
                                             + np.asarray(members[1](x))) / 2, rtol=1e-5,
                               atol=1e-6)
    terms = feature_terms_for(named_model("s", 12), members, distance="mse", weight=0.3,
                              layers="last")
    assert [(t.student_layer, t.teacher_layer, t.teacher, t.weight) for t in terms] == [
        ("conv_b", "conv_b", 0, 0.15), ("conv_b", "conv_b", 1, 0.15)]
    assert feature_terms_for(student, members, distance="mse", weight=0.0) == []
