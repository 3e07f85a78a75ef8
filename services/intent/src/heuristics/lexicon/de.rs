//! German.

use super::Lexicon;

pub const LEXICON: Lexicon = Lexicon {
    code: "de",
    unspaced: false,
    markers: &["der", "die", "das", "den", "dem", "ein", "eine", "einen", "einem", "und", "mit", "ohne", "ist", "im", "auf", "bitte", "jetzt", "noch", "es", "zu"],
    fillers: &["bitte", "jetzt", "und", "auch", "aber", "ok", "danke", "kannst du", "konntest du", "nun"],
    edit_verbs: &["mach", "mache", "mach es", "mach ihn", "mach sie", "farbe", "farbe es", "andere", "aendere", "verwandle", "verwandel", "ersetze", "tausche", "fuge", "fuge hinzu", "entferne", "losche", "setze", "gib", "gib ihm", "gib ihr", "male"],
    pronouns: &["es", "ihn", "sie", "ihm", "ihr", "das"],
    remove: &["entferne", "entfernen", "losche", "loschen", "ohne", "weg", "nimm", "raus"],
    add: &["fuge", "hinzu", "fuge hinzu", "ergange", "gib ihm", "gib ihr", "setze"],
    background: &["hintergrund", "den hintergrund", "der hintergrund"],
    styles: &["aquarell", "anime", "olgemalde", "zeichentrick", "skizze", "stil", "realistisch", "comic", "manga"],
    weather: &["regen", "regnerisch", "schnee", "verschneit", "nebel", "neblig", "gewitter", "sturm", "bewolkt", "sonnig", "winter", "sommer", "herbst"],
    lighting: &["dunkler", "heller", "dunkel", "hell", "licht", "beleuchtung", "schatten", "leuchtender"],
    comparatives: &["mehr", "weniger", "dunkler", "heller", "grosser", "kleiner"],
    colors: &[("rot", "red"), ("rote", "red"), ("roten", "red"), ("blau", "blue"), ("blaue", "blue"), ("blauen", "blue"), ("grun", "green"), ("grune", "green"), ("gelb", "yellow"), ("gelbe", "yellow"), ("orange", "orange"), ("lila", "purple"), ("violett", "violet"), ("rosa", "pink"), ("pink", "pink"), ("schwarz", "black"), ("schwarze", "black"), ("weiss", "white"), ("weisse", "white"), ("grau", "gray"), ("braun", "brown"), ("golden", "golden"), ("silbern", "silver")],
    times: &[("nacht", "at night"), ("nachts", "at night"), ("bei nacht", "at night"), ("tag", "during the day"), ("tagsuber", "during the day"), ("sonnenuntergang", "at sunset"), ("sonnenaufgang", "at sunrise"), ("morgen", "in the morning"), ("morgens", "in the morning"), ("abend", "in the evening"), ("abends", "in the evening"), ("dammerung", "at dusk")],
    rerolls: &["noch eins", "noch einmal", "nochmal", "noch mal", "noch ein bild", "noch eine", "ein anderes", "ein weiteres", "eine andere", "wiederholen", "nochmal bitte", "noch eins bitte", "neu generieren", "noch eine version", "andere version"],
    rejections: &["nein", "vergiss das", "vergiss es", "vergiss", "egal", "doch nicht", "eigentlich", "lieber", "nicht das"],
    requests: &["zeichne", "zeichne mir", "generiere", "erstelle", "erzeuge", "ich mochte", "ich will", "male mir", "zeig mir", "stell dir vor"],
    instead: &["statt", "anstatt", "anstelle"],
};
