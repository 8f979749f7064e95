include!("../components/build_wit_deps.rs");

fn main() {
    sync_wit_deps();
}
