//! Italian.

use super::Lexicon;

pub const LEXICON: Lexicon = Lexicon {
    code: "it",
    unspaced: false,
    markers: &["il", "lo", "la", "i", "gli", "le", "un", "uno", "una", "del", "della", "e", "con", "senza", "di", "in", "nel", "nella", "piu", "molto", "ora", "adesso", "questo", "al", "all"],
    fillers: &["per favore", "per piacere", "ora", "adesso", "e", "anche", "ma", "ok", "grazie", "puoi", "potresti"],
    edit_verbs: &["rendilo", "rendila", "rendi", "fallo", "falla", "fai", "fai che", "metti", "mettilo", "cambia", "cambialo", "cambiala", "trasforma", "trasformalo", "colora", "coloralo", "dipingi", "dipingilo", "sostituisci", "aggiungi", "togli", "rimuovi", "elimina", "cancella"],
    pronouns: &["lo", "la", "li", "questo", "quello"],
    remove: &["togli", "togliere", "rimuovi", "rimuovere", "elimina", "eliminare", "cancella", "senza", "leva"],
    add: &["aggiungi", "aggiungere", "metti", "inserisci", "includi"],
    background: &["sfondo", "lo sfondo"],
    styles: &["acquerello", "anime", "pittura a olio", "olio", "cartone animato", "fumetto", "schizzo", "stile", "realistico", "manga"],
    weather: &["pioggia", "piovoso", "neve", "innevato", "nebbia", "temporale", "tempesta", "nuvoloso", "soleggiato", "inverno", "estate", "autunno"],
    lighting: &["scuro", "scura", "chiaro", "chiara", "luminoso", "luminosa", "luce", "illuminazione", "ombre"],
    comparatives: &["piu", "meno"],
    colors: &[("rosso", "red"), ("rossa", "red"), ("blu", "blue"), ("azzurro", "light blue"), ("verde", "green"), ("giallo", "yellow"), ("gialla", "yellow"), ("arancione", "orange"), ("viola", "purple"), ("rosa", "pink"), ("nero", "black"), ("nera", "black"), ("bianco", "white"), ("bianca", "white"), ("grigio", "gray"), ("grigia", "gray"), ("marrone", "brown"), ("dorato", "golden"), ("dorata", "golden"), ("argento", "silver")],
    times: &[("notte", "at night"), ("di notte", "at night"), ("notturno", "at night"), ("giorno", "during the day"), ("di giorno", "during the day"), ("tramonto", "at sunset"), ("al tramonto", "at sunset"), ("alba", "at dawn"), ("all'alba", "at dawn"), ("mattina", "in the morning"), ("sera", "in the evening"), ("crepuscolo", "at dusk")],
    rerolls: &["un'altra", "un altra", "un altro", "ancora", "ancora una", "ancora una volta", "di nuovo", "un'altra per favore", "un altra per favore", "rifallo", "rifalla", "ripeti", "un'altra versione", "un altra versione", "generane un'altra", "generane un altra", "dammene un'altra", "dammene un altra"],
    rejections: &["no", "lascia perdere", "dimentica", "dimenticalo", "non importa", "anzi", "in realta", "non quello", "meglio"],
    requests: &["disegna", "disegnami", "genera", "generami", "crea", "creami", "voglio", "fammi", "mostrami", "immagina", "dipingi un", "dipingi una"],
    instead: &["invece di", "al posto di", "anziche"],
};
