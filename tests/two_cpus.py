"""The start of a script run in a subprocess on two logical CPUs: ``tf.distribute`` replicas
must be configured before TensorFlow starts. The script's ``sys.argv[1]`` is the repository."""
import textwrap

PREAMBLE = textwrap.dedent("""
    import json, os, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras, numpy as np
    sys.path.insert(0, sys.argv[1])
""")
