use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::tensor::{Tensor, backend::Backend};

/// A float parameter with its dotted module path, which for Ember's models is the Hugging
/// Face checkpoint name (`model.layers.0.self_attn.q_proj.weight`).
#[derive(Debug, Clone)]
pub struct NamedParam<B: Backend> {
    pub name: String,
    pub id: ParamId,
    pub shape: Vec<usize>,
    /// The values, flattened.
    pub values: Tensor<B, 1>,
}

/// Every float parameter of `module`, in declaration order.
pub fn named_params<B: Backend, M: Module<B>>(module: &M) -> Vec<NamedParam<B>> {
    let mut collector = Collector {
        path: Vec::new(),
        params: Vec::new(),
    };
    module.visit(&mut collector);
    collector.params
}

struct Collector<B: Backend> {
    path: Vec<String>,
    params: Vec<NamedParam<B>>,
}

impl<B: Backend> ModuleVisitor<B> for Collector<B> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        // An enum's variant (`Dense`, `FourBit`) is how a value is held, not part of its name.
        self.path.push(if container_type.starts_with("Enum:") {
            String::new()
        } else {
            name.to_string()
        });
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let tensor = param.val();
        self.params.push(NamedParam {
            name: self
                .path
                .iter()
                .filter(|p| !p.is_empty())
                .cloned()
                .collect::<Vec<_>>()
                .join("."),
            id: param.id,
            shape: tensor.dims().to_vec(),
            values: tensor.flatten(0, D - 1),
        });
    }
}
