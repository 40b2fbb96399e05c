//! Any datagram reaching the gossip port: `Sealer::open` must refuse what it did not seal,
//! never accept a packet twice, and give back exactly what was sealed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_discovery::seal::{Addressee, Sealer, ANYONE, MAX_PLAINTEXT_LEN};
use shoal_fuzz::{rng, GOSSIP_KEY, ME, NOW_MS};

fuzz_target!(|data: &[u8]| {
    let mut sealer = Sealer::new(GOSSIP_KEY);
    // The raw bytes as a packet.
    if let Ok((plaintext, _)) = sealer.open(NOW_MS, &ME.0, data) {
        assert!(plaintext.len() <= MAX_PLAINTEXT_LEN);
        assert!(sealer.open(NOW_MS, &ME.0, data).is_err(), "a packet was accepted twice");
    }
    // The bytes as a plaintext, sealed by a peer: opens to the same bytes, once, and only
    // for its addressee; a flipped bit anywhere is refused.
    let Ok(packet) = sealer.seal(NOW_MS, &mut rng(data.len() as u64), &ME.0, data) else {
        assert!(data.len() > MAX_PLAINTEXT_LEN, "a plaintext within the limit failed to seal");
        return;
    };
    let mut other = Sealer::new(GOSSIP_KEY);
    assert!(other.open(NOW_MS, &[2; 16], &packet).is_err(), "opened by a node it was not for");
    let flip = data.first().map_or(0, |b| usize::from(*b)) % packet.len();
    let mut tampered = packet.clone();
    tampered[flip] ^= 1;
    assert!(other.open(NOW_MS, &ME.0, &tampered).is_err(), "a tampered packet opened");
    let (plaintext, to) = other.open(NOW_MS, &ME.0, &packet).expect("a sealed packet opens");
    assert_eq!((plaintext.as_slice(), to), (data, Addressee::Me));
    assert!(other.open(NOW_MS, &ME.0, &packet).is_err(), "a replay opened");
    let broadcast = sealer.seal(NOW_MS, &mut rng(u64::MAX - data.len() as u64), &ANYONE, data).expect("seal");
    assert_eq!(other.open(NOW_MS, &ME.0, &broadcast).map(|(_, to)| to).ok(), Some(Addressee::Anyone));
});
