"""The Distiller: trains a student on labels and on one or more frozen teachers.

Why not ``keras.distillation.Distiller`` (Keras >= 3.12)? It runs exactly one live teacher
model on every batch and weighs ``student_loss_weight * hard + (1 - w) * distillation``
with Keras losses. This project needs three things it cannot do:

* cached teachers: the pipeline can precompute teacher logits once (a big teacher is the
  slowest part of a step) and hand them in the batch as ``x["teacher_logits"]``;
* several teachers whose logits are combined with fixed, per-step or per-example random, or
  confidence-based convex weights (RoS-KD samples them; :mod:`chestkd.distill.teacher_mixing`);
* the papers' losses (:mod:`chestkd.distill.kd_loss`), the hard loss with unknown (-1) labels
  masked out, and separate ``hard_loss`` / ``soft_loss`` reports.

So, like the keras-io knowledge-distillation example, it overrides ``train_step`` and
``test_step``. Teachers are frozen in exactly one place, the constructor, and always run with
``training=False`` outside the gradient tape: their weights, BatchNorm moving statistics
included, are bitwise unchanged by ``fit``, and gradients reach the student only.

``distiller.student`` is what gets saved, evaluated and exported, never the wrapper (which
holds the teachers): use :meth:`Distiller.save_student` or the
:class:`chestkd.training.trainer.StudentCheckpoint` callback.
"""
from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops

from chestkd.distill import teacher_mixing
from chestkd.distill.feature_terms import FeatureTermSet
from chestkd.distill.kd_loss import KDLoss
from chestkd.distill.teacher_mixing import (
    DEFAULT_CONFIDENCE_TEMPERATURE,
    PER_EXAMPLE_SAMPLING,
    TEACHER_COMBINE,
    TEACHER_SAMPLING,
)
from chestkd.errors import ConfigError
from chestkd.models.weights import save_model_atomically
from chestkd.training.losses import MaskedAUC
from chestkd.training.optimizers import loss_scaled


class Distiller(keras.Model):
    """A student trained with a :class:`KDLoss` against frozen teachers.

    Args:
        student: the ``keras.Model`` to train; it outputs float32 logits (B, C).
        teachers: a ``keras.Model``, a list of them (all output (B, C) logits), or None when
            every batch carries cached ``teacher_logits``. Frozen here (``trainable=False``).
        loss: the :class:`KDLoss` (formulation, temperature, alpha).
        multi_label: True for independent findings (the ``auc`` metric ranks by sigmoid),
            False for exclusive classes (ranks by softmax, one-vs-rest).
        teacher_weights: (K,) non-negative weights of the K teachers' logits,
            :math:`z_t = \\sum_k w_k z_t^{(k)} / \\sum_k w_k`; default the uniform mean.
        teacher_sampling: ``"fixed"`` uses ``teacher_weights``; ``"random"`` draws new convex
            weights :math:`w \\sim \\mathrm{Dirichlet}(1, \\dots, 1)` at every training step
            (RoS-KD); ``"random_per_example"`` draws them for every example;
            ``"confidence"`` weighs each teacher per example by its confidence (a simple
            substitute for RoS-KD's RL-learned Baseline IV, NOT that policy). The rules are in
            :mod:`chestkd.distill.teacher_mixing`. Evaluation always uses the uniform mean so
            validation losses compare.
        seed: seed of the random teacher weights (a stateless draw keyed by (seed, step), so a
            run is reproducible; "random" gives every replica the same weights,
            "random_per_example" folds the replica id in).
        weight_draw: the random modes' weights: ``"normalised"`` (Dirichlet(1), the default)
            or ``"exponential"`` (Exp(1) draws as drawn, RoS-KD's Eq. 4 literally; needs
            ``teacher_combine="losses"``); see :mod:`chestkd.distill.teacher_mixing`.
        confidence_temperature: :math:`\\tau` of ``"confidence"`` (> 0).
        teacher_combine: how the weighted teachers enter the soft term. ``"logits"`` (default):
            one divergence against the mixed logits :math:`\\sum_k w_k z^{(k)}` (a
            weighted ensemble teacher); ``"losses"``: the weighted sum of one divergence per
            teacher, :math:`\\sum_k w_k D(z_s, z^{(k)})` — RoS-KD's Eq. 4, where a draw that
            puts most weight on one teacher makes the step follow that teacher alone. The two
            differ whenever the teachers disagree, and neither is always the smaller: the KL
            divergence is convex in the teacher's *distribution*, so a mixture of the teachers'
            probabilities would diverge no more than the weighted sum, but mixing *logits* gives
            another distribution (for softmax, the normalised weighted geometric mean of the
            teachers'), for which no such bound holds — over random logits either can be
            larger.
        feature_terms: :class:`chestkd.distill.feature_terms.FeatureTerm` objects, each adding
            ``weight * distance(student layer, teacher layer)`` to the loss (and a metric of
            its name). They need live teachers; their adapters train with the student and are
            not part of ``distiller.student``.

    Batches are ``(x, y)`` or ``(x, y, sample_weight)`` with ``x`` either the images (the
    teachers run on them) or a dict ``{"image": images, "teacher_logits": t}`` with ``t``
    (B, C) or (B, K, C) precomputed teacher logits (used instead of running the teachers).
    ``y`` is (B, C), -1 marking unknown labels.

    Metrics: ``loss`` (the optimised total, plus any student regularisation), ``hard_loss``,
    ``soft_loss`` (the unweighted terms of :class:`KDLoss`), one entry per feature term (its
    unweighted batch-mean distance, under the term's name), ``auc`` (mean AUC of the
    student, :class:`MaskedAUC`) and whatever ``compile(metrics=...)`` adds.
    """

    def __init__(self, student, teachers=None, *, loss: KDLoss, multi_label=True,
                 teacher_weights=None, teacher_sampling="fixed", seed=0,
                 confidence_temperature=DEFAULT_CONFIDENCE_TEMPERATURE, feature_terms=(),
                 teacher_combine="logits", weight_draw="normalised", name="distiller",
                 **kwargs):
        super().__init__(name=name, **kwargs)
        if not isinstance(student, keras.Model):
            raise ConfigError(f"Distiller: 'student' must be a keras.Model, got {type(student)}")
        if not isinstance(loss, KDLoss):
            raise ConfigError(f"Distiller: 'loss' must be a chestkd.distill.KDLoss, got {loss!r}")
        if teacher_sampling not in TEACHER_SAMPLING:
            raise ConfigError(f"Distiller: unknown option 'teacher_sampling'={teacher_sampling!r};"
                              f" choose one of {list(TEACHER_SAMPLING)}")
        if teacher_combine not in TEACHER_COMBINE:
            raise ConfigError(f"Distiller: unknown option 'teacher_combine'={teacher_combine!r};"
                              f" choose one of {list(TEACHER_COMBINE)}")
        if teachers is None:
            teachers = []
        elif isinstance(teachers, keras.Model):
            teachers = [teachers]
        teachers = list(teachers)
        self.num_classes = int(student.outputs[0].shape[-1]) if getattr(
            student, "outputs", None) else int(student.compute_output_shape(
                (None, *student.input_shape[1:]))[-1])
        for index, teacher in enumerate(teachers):
            if not isinstance(teacher, keras.Model):
                raise ConfigError(f"Distiller: teacher {index} must be a keras.Model, "
                                  f"got {type(teacher)}")
            outputs = getattr(teacher, "outputs", None)
            if outputs and outputs[0].shape[-1] != self.num_classes:
                raise ConfigError(
                    f"Distiller: teacher {index} ({teacher.name}) outputs "
                    f"{outputs[0].shape[-1]} classes, the student {self.num_classes}")
            # The one place teachers are frozen: before compile, so Keras never tracks
            # their weights as trainable.
            teacher.trainable = False
        if teacher_sampling != "fixed" and teacher_weights is not None:
            raise ConfigError(f"Distiller: 'teacher_weights' cannot be combined with "
                              f"teacher_sampling={teacher_sampling!r} (the weights are drawn "
                              f"or computed each step)")
        self.confidence_temperature = teacher_mixing.check_temperature(confidence_temperature)
        self.weight_draw = teacher_mixing.check_weight_draw(weight_draw, teacher_sampling,
                                                            teacher_combine)
        self.student = student
        self.teachers = teachers
        self.kd_loss = loss
        self.multi_label = bool(multi_label)
        self.teacher_sampling = teacher_sampling
        self.teacher_combine = teacher_combine
        self.seed = int(seed)
        self.teacher_weights = teacher_mixing.normalised_weights(teacher_weights,
                                                                  len(teachers) or None)

        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.hard_loss_tracker = keras.metrics.Mean(name="hard_loss")
        self.soft_loss_tracker = keras.metrics.Mean(name="soft_loss")
        self.auc_metric = MaskedAUC(num_labels=self.num_classes, softmax=not self.multi_label,
                                    name="auc")
        self.feature_set = FeatureTermSet(feature_terms, student, teachers) if feature_terms \
            else None
        # Assigned to the model so Keras tracks the adapters' weights (trained, checkpointed).
        self.feature_alignments = list(self.feature_set.alignments) if self.feature_set else []
        self.feature_trackers = [keras.metrics.Mean(name=name) for name in
                                 (self.feature_set.names if self.feature_set else [])]
        # The student and teachers are built models: the wrapper owns no variable of its own,
        # so it is built too (BackupAndRestore requires a built model before fit).
        self.built = True

    # ----------------------------------------------------------------------------- setup
    def compile(self, optimizer="adam", metrics=None, jit_compile="auto", **kwargs):
        """Configure training of the student.

        The loss is the constructor's :class:`KDLoss`; passing ``loss`` is an error. When a
        layer of the student (or of a feature adapter) computes in float16 the optimizer is
        wrapped in a ``LossScaleOptimizer`` so small float16 gradients do not flush to zero
        (``train_step`` scales the loss with ``optimizer.scale_loss``; the wrapper unscales
        the gradients and skips steps whose gradients are not finite). The layers decide,
        not the global policy: a ``.keras`` student keeps the precision it was saved with
        (:func:`chestkd.training.optimizers.loss_scaled`, which prints a line when it is not
        the run's).

        ``jit_compile`` is Keras': True XLA-compiles this class's ``train_step`` and
        ``test_step`` as a whole; pass
        :func:`chestkd.training.trainer.resolve_jit_compile`'s answer (Keras' ``"auto"``
        never uses XLA on a CPU-only machine).
        """
        if kwargs.get("loss") is not None:
            raise ConfigError("Distiller.compile: do not pass 'loss'; the distillation loss is "
                              "the KDLoss given to Distiller(loss=...)")
        kwargs.pop("loss", None)
        optimizer = loss_scaled(optimizer, self.student, *self.feature_alignments)
        # Keras would wrap it again by the wrapper's own (the global) policy.
        kwargs["auto_scale_loss"] = False
        super().compile(optimizer=optimizer, metrics=metrics, jit_compile=jit_compile, **kwargs)

    @property
    def metrics(self):
        metrics = [self.loss_tracker, self.hard_loss_tracker, self.soft_loss_tracker,
                   *self.feature_trackers, self.auc_metric]
        if getattr(self, "_compile_metrics", None) is not None:
            metrics.append(self._compile_metrics)
        return metrics

    # --------------------------------------------------------------------------- forward
    @staticmethod
    def _split_inputs(x):
        """(images, cached teacher logits or None) from a batch's ``x``."""
        if isinstance(x, dict):
            if "image" not in x:
                raise ConfigError(f"Distiller: a dict batch needs an 'image' entry, got keys "
                                  f"{sorted(x)}")
            return x["image"], x.get("teacher_logits")
        return x, None

    def call(self, inputs, training=False):
        """Student logits: ``predict`` and ``evaluate`` see the student only."""
        images, _ = self._split_inputs(inputs)
        return self.student(images, training=training)

    def teacher_mixing_weights(self, num_teachers, training):
        """(K,) convex weights shared by the batch: ``"fixed"``, ``"random"``, or evaluation.

        The per-example modes have no batch-wide weights while training: use
        :meth:`example_teacher_weights`.
        """
        if training and self.teacher_sampling in PER_EXAMPLE_SAMPLING:
            raise ConfigError(f"Distiller: teacher_sampling={self.teacher_sampling!r} weighs "
                              f"each example; call example_teacher_weights(stacked_logits)")
        if self.teacher_sampling == "random" and training:
            seed = teacher_mixing.step_seed(self.seed, self.optimizer.iterations)
            return teacher_mixing.random_weights((num_teachers,), seed, self.weight_draw)
        if self.teacher_weights is None:
            return ops.full((num_teachers,), 1.0 / num_teachers, dtype="float32")
        if len(self.teacher_weights) != num_teachers:
            raise ConfigError(f"Distiller: 'teacher_weights' has {len(self.teacher_weights)} "
                              f"values, the batch has logits of {num_teachers} teachers")
        return ops.convert_to_tensor(self.teacher_weights, dtype="float32")

    def example_teacher_weights(self, stacked_logits, training):
        """(B, K) convex weights of the teachers for every example of (B, K, C) logits."""
        num_teachers = stacked_logits.shape[1]
        if training and self.teacher_sampling == "random_per_example":
            seed = teacher_mixing.step_seed(self.seed, self.optimizer.iterations,
                                            per_replica=True)
            shape = (ops.shape(stacked_logits)[0], num_teachers)
            return teacher_mixing.random_weights(shape, seed, self.weight_draw)
        if training and self.teacher_sampling == "confidence":
            return teacher_mixing.confidence_weights(stacked_logits, self.multi_label,
                                                     self.confidence_temperature)
        weights = self.teacher_mixing_weights(num_teachers, training)
        return ops.ones_like(stacked_logits[:, :, 0]) * weights[None, :]

    def teacher_targets(self, x, training=False):
        """(images, soft targets) for a batch ``x``, gradient-free.

        The targets are the mixed teacher logits (B, C) with ``teacher_combine="logits"``, or
        the pair ((B, K, C) logits, (B, K) weights) with ``"losses"``. Cached logits in
        ``x["teacher_logits"]`` take precedence over running the teachers.
        """
        images, combined, _ = self.teacher_targets_and_maps(x, training)
        return images, combined

    def teacher_targets_and_maps(self, x, training=False):
        """(images, soft targets (see :meth:`teacher_targets`), {(teacher, layer): maps}).

        The maps are those the feature terms name ({} without terms), gradient-free.
        """
        images, cached = self._split_inputs(x)
        teacher_maps = {}
        if cached is not None and self.feature_set is not None:
            raise ConfigError("Distiller: feature terms need live teachers, but the batch "
                              "carries cached 'teacher_logits' (logits only, no feature maps)")
        if cached is not None:
            stacked = ops.cast(cached, "float32")
            if len(stacked.shape) == 2:
                stacked = stacked[:, None, :]
            elif len(stacked.shape) != 3:
                raise ConfigError(f"Distiller: 'teacher_logits' must be (B, C) or (B, K, C), "
                                  f"got shape {tuple(stacked.shape)}")
        elif self.feature_set is not None:
            logits, teacher_maps = self.feature_set.run_teachers(self.teachers, images)
            stacked = ops.stack([ops.cast(value, "float32") for value in logits], axis=1)
        elif self.teachers:
            stacked = ops.stack(
                [ops.cast(teacher(images, training=False), "float32") for teacher in self.teachers],
                axis=1)
        else:
            raise ConfigError("Distiller: no teachers were given, so every batch must carry "
                              "x = {'image': ..., 'teacher_logits': ...}")
        if stacked.shape[-1] not in (None, self.num_classes):
            raise ConfigError(f"Distiller: teacher logits have {stacked.shape[-1]} classes, the "
                              f"student {self.num_classes}")
        if stacked.shape[1] is None:
            raise ConfigError("Distiller: the number of teachers in 'teacher_logits' (axis 1) "
                              "must be known when the step is traced")
        if training and self.teacher_sampling in PER_EXAMPLE_SAMPLING:
            weights = self.example_teacher_weights(stacked, training)
        else:
            weights = self.teacher_mixing_weights(stacked.shape[1], training)
        if self.teacher_combine == "losses":
            weights = ops.ones_like(stacked[:, :, 0]) * (
                weights[None, :] if len(weights.shape) == 1 else weights)
            return images, (ops.stop_gradient(stacked), ops.stop_gradient(weights)), teacher_maps
        return images, ops.stop_gradient(teacher_mixing.mix(stacked, weights)), teacher_maps

    def student_outputs(self, images, training):
        """(student logits, {layer: maps}); the maps only when there are feature terms."""
        if self.feature_set is None:
            return self.student(images, training=training), {}
        return self.feature_set.run_student(images, training)

    def compute_kd_losses(self, y, student_logits, teacher_logits, sample_weight=None,
                          student_maps=None, teacher_maps=None):
        """Batch-reduced ``{"loss", "hard_loss", "soft_loss", <feature term names>}``.

        Reduction as Keras' ``sum_over_batch_size``: :math:`\\frac{1}{B}\\sum_i w_i L_i`.
        ``loss`` = the KDLoss total + sum of ``weight * term`` over the feature terms + the
        student's regularisation losses (as in ``Model.compute_loss``); the terms are reported
        unweighted.
        """
        if isinstance(teacher_logits, tuple):
            # teacher_combine="losses": sum_k w_k D(z_s, z^(k)), K known when traced.
            stacked, weights = teacher_logits
            hard = self.kd_loss.hard(y, student_logits)
            soft = sum(weights[:, k] * self.kd_loss.soft(student_logits, stacked[:, k, :])
                       for k in range(stacked.shape[1]))
            total = (1.0 - self.kd_loss.alpha) * hard + self.kd_loss.alpha * soft
        else:
            hard, soft, total = self.kd_loss.per_sample(y, student_logits, teacher_logits)
        batch_size = ops.cast(ops.shape(total)[0], "float32")

        def reduce(values):
            if sample_weight is not None:
                values = values * ops.reshape(ops.cast(sample_weight, "float32"), (-1,))
            return ops.divide_no_nan(ops.sum(values), batch_size)

        loss = reduce(total)
        feature_losses = {}
        if self.feature_set is not None:
            distances = self.feature_set.distances(student_maps, teacher_maps)
            for term, (name, values) in zip(self.feature_set.terms, distances.items()):
                feature_losses[name] = reduce(values)
                loss = loss + term.weight * feature_losses[name]
        regularisation = list(self.student.losses) + [
            extra for alignment in self.feature_alignments for extra in alignment.losses]
        if regularisation:
            loss = loss + ops.sum([ops.cast(extra, "float32") for extra in regularisation])
        return {"loss": loss, "hard_loss": reduce(hard), "soft_loss": reduce(soft),
                **feature_losses}

    # ------------------------------------------------------------------- train / evaluate
    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        # 1. Soft targets from the frozen teachers (or the cached table), outside the tape.
        images, teacher_logits, teacher_maps = self.teacher_targets_and_maps(x, training=True)
        # 2. Student forward pass and the distillation loss, taped for the student only.
        with tf.GradientTape() as tape:
            student_logits, student_maps = self.student_outputs(images, training=True)
            losses = self.compute_kd_losses(y, student_logits, teacher_logits, sample_weight,
                                            student_maps, teacher_maps)
            scaled_loss = self.optimizer.scale_loss(self._per_replica_share(losses["loss"]))
        # 3. Gradient step on the student's weights and the feature adapters' (a
        # LossScaleOptimizer unscales them).
        student_weights = self.student.trainable_weights + [
            weight for alignment in self.feature_alignments
            for weight in alignment.trainable_weights]
        gradients = tape.gradient(scaled_loss, student_weights)
        self.optimizer.apply_gradients(zip(gradients, student_weights))
        # 4. Report loss, hard_loss, soft_loss, auc and the compiled metrics.
        return self._update_metrics(images, y, student_logits, losses, sample_weight)

    @staticmethod
    def _per_replica_share(loss):
        """:math:`L / R` with R the replicas in sync (1 outside tf.distribute).

        tf.distribute SUMS the replicas' gradients, so each replica's mean loss is divided by
        the number of replicas for the sum to be the gradient of the global-batch mean (what
        Keras' own ``compute_loss`` does). Mixed precision then multiplies it by the loss
        scale. Inside ``strategy.run`` ``get_strategy()`` is the running strategy.
        """
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        return loss if replicas == 1 else loss / ops.cast(replicas, loss.dtype)

    def test_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        images, teacher_logits, teacher_maps = self.teacher_targets_and_maps(x, training=False)
        student_logits, student_maps = self.student_outputs(images, training=False)
        losses = self.compute_kd_losses(y, student_logits, teacher_logits, sample_weight,
                                        student_maps, teacher_maps)
        return self._update_metrics(images, y, student_logits, losses, sample_weight)

    def _update_metrics(self, images, y, student_logits, losses, sample_weight):
        # Each replica adds (its mean loss, its batch size); the Mean's sum-on-read variables
        # then give the mean over the global batch, the same as with one replica.
        batch_size = ops.shape(images)[0]
        self.loss_tracker.update_state(losses["loss"], sample_weight=batch_size)
        self.hard_loss_tracker.update_state(losses["hard_loss"], sample_weight=batch_size)
        self.soft_loss_tracker.update_state(losses["soft_loss"], sample_weight=batch_size)
        for tracker in self.feature_trackers:
            tracker.update_state(losses[tracker.name], sample_weight=batch_size)
        self.auc_metric.update_state(y, student_logits, sample_weight=sample_weight)
        if getattr(self, "_compile_metrics", None) is not None:
            self._compile_metrics.update_state(y, student_logits, sample_weight)
        return self.get_metrics_result()

    # ------------------------------------------------------------------------- saving
    def save_student(self, path):
        """Save the student (never the wrapper) as a ``.keras`` file, atomically."""
        save_model_atomically(self.student, path)

    def get_config(self):
        # The wrapper is not meant to be serialised (save the student); the config records
        # what it was for logs and reports.
        return {"name": self.name, "loss": self.kd_loss.get_config(),
                "multi_label": self.multi_label, "teacher_sampling": self.teacher_sampling,
                "teacher_combine": self.teacher_combine, "weight_draw": self.weight_draw,
                "confidence_temperature": self.confidence_temperature,
                "feature_terms": [term.get_config() for term in
                                  (self.feature_set.terms if self.feature_set else ())],
                "num_teachers": len(self.teachers), "seed": self.seed,
                "teacher_weights": None if self.teacher_weights is None
                else self.teacher_weights.tolist()}
