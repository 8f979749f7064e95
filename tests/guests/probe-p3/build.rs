include!("../../../components/build_wit_deps.rs");

fn main() {
    sync_wit_deps();
    println!("cargo:rerun-if-changed=../probe-p3/wit/counter.wit");
}
