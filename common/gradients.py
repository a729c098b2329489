"""Gradients on every backend: the one place where the workbook names a backend.

Keras's ``fit`` takes its own gradients. A lab that takes gradients itself (a
GAN's two networks, a gradient penalty, per-layer gradient norms, grad-CAM)
calls one of these, and they pick PyTorch autograd, ``tf.GradientTape`` or
``jax.value_and_grad`` by ``keras.backend.backend()``::

    loss, gradients = value_and_gradients(lambda: loss_of(model(x)), weights)
    scores, (gradient,) = value_and_input_gradients(critic, [images])

``function`` returns a scalar tensor, or a tuple whose first item is the scalar
(the rest comes back untouched: terms to log, other outputs). The first item of
the result is what ``function`` returned.

On JAX, gradients are pure functions of values, so these helpers run
``function`` in a ``keras.StatelessScope`` that maps each variable to the value
being differentiated, then hand every variable that ``function`` assigned
(BatchNorm statistics, random-seed states, metrics) to the enclosing scope, or
assign it when there is none. :func:`stateless_step` is the other half: JAX's
``fit`` calls ``train_step(state, data)`` as one pure, compiled function (the
keras-io guide "Customizing what happens in fit() with JAX"); it runs a
stateful step written as for PyTorch inside a scope built from ``state`` and
returns the new state, and :func:`stateless_on_jax` decorates a model's
``train_step``/``test_step`` with it. Every variable the step changes must be
part of that state: a second optimizer's too (see labs/lab3_gan.py).
"""

import functools

import keras

from common.cli import WorkbookError

BACKENDS = ("torch", "tensorflow", "jax")


def value_and_gradients(function, variables, create_graph=False):
    """Call ``function()``; differentiate its scalar w.r.t. Keras ``variables``.

    With ``create_graph=True`` the gradients can themselves be differentiated
    (PyTorch needs the flag; TensorFlow's nested tapes and JAX always can).
    Returns ``(output, gradients)``, a zero gradient for an unused variable.
    """
    return _backend_function()(function, list(variables), (), create_graph)


def value_and_input_gradients(function, inputs, create_graph=True):
    """Call ``function(*inputs)``; differentiate its scalar w.r.t. the tensors
    ``inputs`` (a gradient penalty's interpolates, grad-CAM's feature maps).

    The gradients are differentiable by default, as a gradient penalty needs.
    Returns ``(output, gradients)``.
    """
    inputs = [keras.ops.convert_to_tensor(tensor) for tensor in inputs]
    return _backend_function()(function, [], inputs, create_graph)


def _backend_function():
    backend = keras.backend.backend()
    if backend not in BACKENDS:
        raise WorkbookError(
            f"common/gradients.py takes gradients on PyTorch, TensorFlow and JAX, "
            f"but Keras runs on the {backend!r} backend. Run with KERAS_BACKEND=torch "
            "(the workbook default), tensorflow or jax."
        )
    return {"torch": _torch, "tensorflow": _tensorflow, "jax": _jax}[backend]


def _first(output):
    return output[0] if isinstance(output, tuple) else output


def _torch(function, variables, inputs, create_graph):
    import torch

    sources = [variable.value for variable in variables]
    if inputs:  # fresh leaves, so that the gradient is w.r.t. these very tensors
        inputs = [tensor.detach().requires_grad_(True) for tensor in inputs]
        sources = inputs
    output = function(*inputs)
    gradients = torch.autograd.grad(
        _first(output), sources, create_graph=create_graph, allow_unused=True
    )
    gradients = [
        torch.zeros_like(source) if gradient is None else gradient
        for source, gradient in zip(sources, gradients)
    ]
    return output, gradients


def _tensorflow(function, variables, inputs, create_graph):
    import tensorflow as tf

    sources = inputs or [variable.value for variable in variables]
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        tape.watch(sources)  # an outer tape, if any, records this one: 2nd order
        output = function(*inputs)
    gradients = tape.gradient(
        _first(output), sources, unconnected_gradients=tf.UnconnectedGradients.ZERO
    )
    return output, gradients


class _RecordingScope(keras.StatelessScope):
    """A StatelessScope that starts from ``base`` (the enclosing scope's values)
    and remembers which variables were assigned inside it."""

    def __init__(self, base, mapping, assigned):
        super().__init__(state_mapping=mapping)
        self.state_mapping = {**base, **self.state_mapping}
        self.assigned = assigned

    def add_update(self, update):
        super().add_update(update)
        self.assigned[id(update[0])] = update[0]


def _jax(function, variables, inputs, create_graph):
    import jax
    from keras.src.backend.common.stateless_scope import get_stateless_scope

    outer = get_stateless_scope()
    base = dict(outer.state_mapping) if outer is not None else {}
    assigned = {}

    def pure(variable_values, input_values):
        mapping = list(zip(variables, variable_values))
        scope = _RecordingScope(base, mapping, assigned)
        with scope:
            output = function(*input_values)
        updates = {key: scope.state_mapping[key] for key in assigned}
        return _first(output), (output, updates)

    values = [variable.value for variable in variables]
    argument = 1 if inputs else 0
    differentiate = jax.value_and_grad(pure, argnums=argument, has_aux=True)
    (_, (output, updates)), gradients = differentiate(values, list(inputs))
    for key, value in updates.items():
        if outer is not None:
            outer.add_update((assigned[key], value))
        else:
            assigned[key].assign(value)
    return output, list(gradients)


def stateless_step(model, step, state, data):
    """JAX: run the stateful ``step(data)`` as the pure ``train_step(state,
    data)`` (4 groups of values) or ``test_step(state, data)`` (3 groups) that
    JAX's ``fit`` and ``evaluate`` call; returns ``(logs, new_state)``."""
    groups = [model.trainable_variables, model.non_trainable_variables]
    if len(state) == 4:
        groups.append(model.optimizer.variables)
    groups.append(model.metrics_variables)
    mapping = [
        (variable, value)
        for variables, values in zip(groups, state)
        for variable, value in zip(variables, values)
    ]
    with keras.StatelessScope(state_mapping=mapping) as scope:
        logs = step(data)
    new_state = tuple(
        [scope.get_current_value(variable) for variable in variables]
        for variables in groups
    )
    return logs, new_state


def stateless_on_jax(step):
    """Decorate a model's ``train_step(self, data)`` or ``test_step(self, data)``
    written statefully (as for PyTorch): on JAX, whose ``fit`` calls
    ``step(state, data)``, it runs through :func:`stateless_step`."""

    @functools.wraps(step)
    def backend_step(model, *state_and_data):
        if keras.backend.backend() != "jax":
            return step(model, *state_and_data)
        state, data = state_and_data
        return stateless_step(model, lambda batch: step(model, batch), state, data)

    return backend_step
