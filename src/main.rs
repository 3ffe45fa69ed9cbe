fn main() {
    print!("{}", gamezone::api::crds_yaml());
}
