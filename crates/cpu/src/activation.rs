use ember_model::Activation;

/// `act(gate) · up` in place in `gate`, each GELU as burn evaluates it in f32 (the generic
/// path's `ember_model` MLP).
pub(crate) fn gated(activation: Activation, gate: &mut [f32], up: &[f32]) {
    for (g, u) in gate.iter_mut().zip(up) {
        *g = gelu(activation, *g) * u;
    }
}

fn gelu(activation: Activation, x: f32) -> f32 {
    match activation {
        Activation::GeluTanh => {
            const SQRT_2_OVER_PI: f64 = std::f64::consts::FRAC_2_SQRT_PI * std::f64::consts::FRAC_1_SQRT_2;
            let inner = (x + x.powf(3.0) * 0.044715) * SQRT_2_OVER_PI as f32;
            (x * (inner.tanh() + 1.0)) * 0.5
        }
        Activation::GeluErf => x * (libm::erf((x / std::f32::consts::SQRT_2) as f64) as f32 + 1.0) / 2.0,
    }
}
