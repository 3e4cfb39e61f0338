use mp_storage::Scope;

#[derive(Scope)]
union Bits {
    int: u32,
    float: f32,
}

fn main() {}
