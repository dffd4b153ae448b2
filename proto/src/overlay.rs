//! Whom a site relays changes to (docs/architecture.md, "Peers together"):
//! a bounded set of neighbours on a few hash rings, so that a change costs a
//! realm O(N) announcements instead of one per pair of sites.
//!
//! Every member is placed on [`RINGS`] rings by a hash of (ring, site): two
//! rings hold the whole realm, two hold only the members of one region (so a
//! region cut off from the rest stays connected within itself). A site's
//! neighbours on a ring are its nearest successor and predecessor; every site
//! computes the same rings from the member list, so the relation is
//! symmetric, and the union of a few random rings is an expander: a flood
//! along it reaches every site within O(log N) hops. A neighbour out of reach
//! is replaced by the next site on the ring that is reachable (up to
//! [`WINDOW`] away), which keeps a flood going around a cut.
//!
//! Pure: no clock, no randomness beyond the hashes.

use std::collections::{BTreeMap, BTreeSet};

use atoll_crdt::SiteId;

use crate::sync::Seat;

/// Rings per realm: [`REALM_RINGS`] over all members, the rest over a region.
pub const RINGS: usize = 4;
/// Rings over the whole realm (the others are regional).
pub const REALM_RINGS: usize = 2;
/// How far along a ring a site looks for a reachable neighbour, each way.
pub const WINDOW: usize = 8;
/// Realms of at most this many members relay to every connected site: the
/// rings' neighbours would be nearly everyone anyway.
pub const RELAY_ALL_UP_TO: usize = 2 * RINGS + 1;
/// Realms of at most this many members keep a connection between every pair
/// of sites; in larger ones a site keeps connections to [`kept`] only and
/// opens others on demand (a targeted message, a chunk, logs), closing them
/// when idle. 16 is the bound on persistent connections per site.
pub const FULL_MESH_UP_TO: usize = 16;

/// One site's view of the rings: its nearest sites each way, nearest first.
#[derive(Debug, Clone, Default)]
pub struct Overlay {
    /// Every member but this site, when the realm is small enough to relay to all.
    all: Option<BTreeSet<SiteId>>,
    /// Per ring: (successors, predecessors), nearest first, at most WINDOW each.
    rings: Vec<(Vec<SiteId>, Vec<SiteId>)>,
}

/// A site's position on ring `ring`. FNV-1a over the name then a 64-bit
/// finaliser: cheap enough for every site of a 10,000-site simulation to
/// place every member, and spread evenly.
fn position(ring: usize, site: &SiteId) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ (ring as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for b in site.as_str().bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// Every member's place on every ring, sorted: built once per member list
/// (O(N log N)), it gives any site's view in O(log N). Every simulated site
/// asks for its own view and for the custodians of the documents it holds,
/// each of which needs the owner's view: from the list each time, that was
/// O(N) per question and N² over a 10,000-site run.
#[derive(Debug, Clone, Default)]
pub struct Rings {
    /// The members, by name.
    seats: Vec<Seat>,
    /// Per ring, its lanes by region ("" for a realm ring's one lane):
    /// each (position, site), sorted. A map, so that a realm whose members
    /// all name another region costs O(N log N) to place, not O(N²).
    rings: Vec<BTreeMap<String, Lane>>,
}

/// The sites of one ring in one region: (position, site), sorted.
type Lane = Vec<(u64, SiteId)>;

impl Rings {
    pub fn new(members: &[Seat]) -> Rings {
        let mut seats = members.to_vec();
        seats.sort_by(|a, b| a.site.cmp(&b.site));
        seats.dedup_by(|a, b| a.site == b.site);
        let rings = (0..RINGS)
            .map(|ring| {
                let mut lanes: BTreeMap<String, Lane> = BTreeMap::new();
                for m in &seats {
                    let region = if ring < REALM_RINGS { "" } else { m.region.as_str() };
                    let lane = match lanes.get_mut(region) {
                        Some(lane) => lane,
                        None => lanes.entry(region.to_string()).or_default(),
                    };
                    lane.push((position(ring, &m.site), m.site.clone()));
                }
                for lane in lanes.values_mut() {
                    lane.sort();
                }
                lanes
            })
            .collect();
        Rings { seats, rings }
    }

    /// How many members the rings place.
    pub fn len(&self) -> usize {
        self.seats.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seats.is_empty()
    }

    /// The region of member `site`, if it is one.
    pub fn region(&self, site: &SiteId) -> Option<&str> {
        let at = self.seats.binary_search_by(|m| m.site.cmp(site)).ok()?;
        Some(self.seats[at].region.as_str())
    }

    /// `me`'s view of the rings (`me` may or may not be a member).
    pub fn overlay(&self, me: &SiteId) -> Overlay {
        if self.seats.len() <= RELAY_ALL_UP_TO {
            let all = self.seats.iter().filter(|m| &m.site != me).map(|m| m.site.clone()).collect();
            return Overlay { all: Some(all), rings: Vec::new() };
        }
        let region = self.region(me);
        let rings = self
            .rings
            .iter()
            .enumerate()
            .map(|(ring, lanes)| {
                let lane = if ring < REALM_RINGS { Some("") } else { region };
                let Some(lane) = lane.and_then(|r| lanes.get(r)) else {
                    return (Vec::new(), Vec::new());
                };
                let here = position(ring, me);
                (walk(lane, here, me, true), walk(lane, here, me, false))
            })
            .collect();
        Overlay { all: None, rings }
    }

    /// The members `me` keeps a connection to (see [`kept`]).
    pub fn kept(&self, me: &SiteId) -> BTreeSet<SiteId> {
        if self.seats.len() <= FULL_MESH_UP_TO {
            return self.seats.iter().filter(|m| &m.site != me).map(|m| m.site.clone()).collect();
        }
        self.overlay(me).neighbours()
    }
}

/// The [`WINDOW`] sites of `lane` nearest to `here` going one way (after it,
/// or before it), `me` left out, nearest first, ties by name.
fn walk(lane: &[(u64, SiteId)], here: u64, me: &SiteId, after: bool) -> Vec<SiteId> {
    let n = lane.len();
    let distance = |p: u64| if after { p.wrapping_sub(here) } else { here.wrapping_sub(p) };
    // Going round from the nearest place, distances only grow.
    let start = if after {
        lane.partition_point(|(p, _)| *p < here)
    } else {
        lane.partition_point(|(p, _)| *p <= here)
    };
    let mut picked: Vec<(u64, &SiteId)> = Vec::new();
    for k in 0..n {
        let i = if after { (start + k) % n } else { (start + n - 1 - k) % n };
        let (p, site) = (lane[i].0, &lane[i].1);
        let d = distance(p);
        if picked.len() >= WINDOW && d > picked[WINDOW - 1].0 {
            break;
        }
        if site != me {
            picked.push((d, site));
        }
    }
    picked.sort();
    picked.into_iter().take(WINDOW).map(|(_, s)| s.clone()).collect()
}

impl Overlay {
    /// `me`'s view of the rings of `members` (which may or may not list `me`);
    /// for many sites' views of one list, build [`Rings`] once.
    pub fn build(members: &[Seat], me: &SiteId) -> Overlay {
        Rings::new(members).overlay(me)
    }

    /// The sites to relay to when all are reachable: the nearest each way on
    /// every ring (at most 2 x RINGS), or everyone in a small realm.
    pub fn neighbours(&self) -> BTreeSet<SiteId> {
        self.relay(|_| true)
    }

    /// The sites to relay to now: on every ring, each way, the nearest site
    /// that `reachable` accepts within the window; every reachable member in
    /// a small realm.
    pub fn relay(&self, reachable: impl Fn(&SiteId) -> bool) -> BTreeSet<SiteId> {
        if let Some(all) = &self.all {
            return all.iter().filter(|s| reachable(s)).cloned().collect();
        }
        let mut out = BTreeSet::new();
        for (after, before) in &self.rings {
            for side in [after, before] {
                if let Some(s) = side.iter().find(|s| reachable(s)) {
                    out.insert(s.clone());
                }
            }
        }
        out
    }
}

/// The members `me` keeps a connection to: everyone in a realm of at most
/// [`FULL_MESH_UP_TO`] members; above, its ring neighbours only, at most
/// 2 x [`RINGS`]. They cover custody both ways: a site's custodians are
/// chosen among its neighbours (`crate::sync::custodians`) and the relation
/// is symmetric, so the owners whose custodian it is are neighbours too.
/// Both ends of a kept link keep it.
pub fn kept(members: &[Seat], me: &SiteId) -> BTreeSet<SiteId> {
    Rings::new(members).kept(me)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, VecDeque};

    fn seats(n: usize, regions: usize) -> Vec<Seat> {
        (0..n)
            .map(|i| Seat {
                site: SiteId::new(&format!("site-{i}")).unwrap(),
                region: format!("r{}", i % regions),
            })
            .collect()
    }

    /// The view built straight from the list, as before [`Rings`]: the
    /// `WINDOW` nearest of the others on each ring by distance, ties by name.
    fn reference(members: &[Seat], me: &SiteId) -> Overlay {
        fn nearest<'a>(
            sites: impl Iterator<Item = &'a SiteId>,
            distance: impl Fn(&SiteId) -> u64,
        ) -> Vec<SiteId> {
            let mut ranked: Vec<(u64, &SiteId)> = sites.map(|s| (distance(s), s)).collect();
            ranked.sort();
            ranked.into_iter().take(WINDOW).map(|(_, s)| s.clone()).collect()
        }
        let others = || members.iter().filter(|m| &m.site != me);
        if members.len() <= RELAY_ALL_UP_TO {
            return Overlay { all: Some(others().map(|m| m.site.clone()).collect()), rings: Vec::new() };
        }
        let region = members.iter().find(|m| &m.site == me).map(|m| m.region.as_str());
        let rings = (0..RINGS)
            .map(|ring| {
                let here = position(ring, me);
                let on_ring = || others().filter(|m| ring < REALM_RINGS || Some(m.region.as_str()) == region);
                let after = nearest(on_ring().map(|m| &m.site), |s| position(ring, s).wrapping_sub(here));
                let before = nearest(on_ring().map(|m| &m.site), |s| here.wrapping_sub(position(ring, s)));
                (after, before)
            })
            .collect();
        Overlay { all: None, rings }
    }

    fn graph(members: &[Seat]) -> BTreeMap<SiteId, BTreeSet<SiteId>> {
        members.iter().map(|m| (m.site.clone(), Overlay::build(members, &m.site).neighbours())).collect()
    }

    /// Sites reached by a flood from `start` where each site relays to its
    /// `relay` set restricted to `alive`.
    fn flood(members: &[Seat], start: &SiteId, alive: &BTreeSet<SiteId>) -> (BTreeSet<SiteId>, usize) {
        let views: BTreeMap<SiteId, Overlay> =
            members.iter().map(|m| (m.site.clone(), Overlay::build(members, &m.site))).collect();
        let mut seen = BTreeSet::from([start.clone()]);
        let mut queue = VecDeque::from([(start.clone(), 0)]);
        let mut hops = 0;
        while let Some((s, d)) = queue.pop_front() {
            hops = hops.max(d);
            for n in views[&s].relay(|x| alive.contains(x)) {
                if seen.insert(n.clone()) {
                    queue.push_back((n, d + 1));
                }
            }
        }
        (seen, hops)
    }

    #[test]
    fn small_realms_relay_to_everyone() {
        let members = seats(RELAY_ALL_UP_TO, 1);
        let o = Overlay::build(&members, &members[0].site);
        assert_eq!(o.neighbours().len(), RELAY_ALL_UP_TO - 1);
        assert!(!o.neighbours().contains(&members[0].site));
    }

    #[test]
    fn neighbours_are_bounded_symmetric_and_the_same_whatever_the_order() {
        let members = seats(300, 5);
        let g = graph(&members);
        for (s, ns) in &g {
            assert!(ns.len() <= 2 * RINGS && !ns.is_empty(), "{s}: {ns:?}");
            assert!(!ns.contains(s));
            for n in ns {
                assert!(g[n].contains(s), "{s} -> {n} but not back");
            }
        }
        let mut reversed = members.clone();
        reversed.reverse();
        assert_eq!(graph(&reversed), g);
    }

    #[test]
    fn a_flood_reaches_everyone_in_few_hops_and_a_cut_off_region_floods_within_itself() {
        let members = seats(1000, 10);
        let everyone: BTreeSet<SiteId> = members.iter().map(|m| m.site.clone()).collect();
        let (seen, hops) = flood(&members, &members[0].site, &everyone);
        assert_eq!(seen.len(), 1000);
        assert!(hops <= 12, "{hops} hops");
        // Region r3 cut off: its sites still reach each other.
        let island: BTreeSet<SiteId> =
            members.iter().filter(|m| m.region == "r3").map(|m| m.site.clone()).collect();
        let (seen, _) = flood(&members, &members[3].site, &island);
        assert_eq!(seen, island);
    }

    #[test]
    fn kept_links_are_everyone_in_a_small_realm_and_bounded_symmetric_above() {
        let small = seats(FULL_MESH_UP_TO, 2);
        assert_eq!(kept(&small, &small[3].site).len(), FULL_MESH_UP_TO - 1);
        let members = seats(400, 4);
        let all: BTreeMap<SiteId, BTreeSet<SiteId>> =
            members.iter().map(|m| (m.site.clone(), kept(&members, &m.site))).collect();
        let most = all.values().map(BTreeSet::len).max().unwrap();
        assert!(most <= 2 * RINGS, "most {most}");
        for (s, ks) in &all {
            assert!(!ks.contains(s));
            for k in ks {
                assert!(all[k].contains(s), "{s} keeps {k} but not back");
            }
            for c in crate::sync::custodians(&Rings::new(&members), s) {
                assert!(ks.contains(&c), "{s} keeps its custodian {c}");
                assert!(all[&c].contains(s), "{c} keeps the owner {s} it is custodian of");
            }
        }
    }

    proptest! {
        /// Rings answer every site's view, members or not, exactly as the
        /// list does (ties included: a tiny name space makes positions collide
        /// only by chance, so a few runs pin equal positions too).
        #[test]
        fn rings_give_the_view_the_member_list_gives(
            n in 1usize..60, regions in 1usize..60, stranger in 0usize..80,
        ) {
            let members = seats(n, regions);
            let rings = Rings::new(&members);
            let mut asked: Vec<SiteId> = members.iter().map(|m| m.site.clone()).collect();
            asked.push(SiteId::new(&format!("site-{stranger}")).unwrap());
            for me in &asked {
                let (a, b) = (rings.overlay(me), reference(&members, me));
                prop_assert_eq!(&a.all, &b.all);
                prop_assert_eq!(&a.rings, &b.rings, "{}", me);
            }
        }

        #[test]
        fn the_flood_over_reachable_sites_reaches_all_of_them(
            n in 10usize..120, regions in 1usize..6, dead in proptest::collection::btree_set(0usize..120, 0..6),
        ) {
            let members = seats(n, regions);
            let alive: BTreeSet<SiteId> = members
                .iter()
                .enumerate()
                .filter(|(i, _)| *i == 0 || !dead.contains(i))
                .map(|(_, m)| m.site.clone())
                .collect();
            let (seen, _) = flood(&members, &members[0].site, &alive);
            // A few failed sites never split the flood: each ring routes around them.
            prop_assert_eq!(seen, alive);
        }
    }
}
